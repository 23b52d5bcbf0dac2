"""R2END (Reasoning-to-Encoder Distillation), in the order its stages run:

``targets`` (embed: what the encoder embeds), ``distill`` (the student learns history text -> the
teacher's target embedding), ``projection`` (f aligns users and items), ``recommender`` (the trained
model behind the recommender interface).
"""
