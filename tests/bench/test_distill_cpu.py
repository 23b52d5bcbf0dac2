"""The distillation benchmark's summary: speedups and held-out loss changes against float32, paired by seed."""

from bench import distill_cpu


def run(seconds: float, loss: float) -> dict:
    return {"train_seconds": seconds, "held_out_loss": loss}


def test_each_setting_is_compared_with_float32_of_the_same_seed():
    runs = {
        "float32": {22: run(100.0, 0.50), 23: run(120.0, 0.40)},
        "bfloat16": {22: run(50.0, 0.51), 23: run(40.0, 0.42)},
    }
    summary = distill_cpu.summarise(runs)
    assert summary["float32"]["speedup"] == 1.0 and summary["float32"]["held_out_loss_change"] == 0
    assert summary["bfloat16"]["speedup"] == 2.5  # the mean of 2x and 3x, not 220 s / 90 s
    assert summary["bfloat16"]["held_out_loss_change_per_seed"] == [0.02, 0.05]
    assert summary["bfloat16"]["held_out_loss_change"] == 0.035
    table = distill_cpu.report(
        {"users_distilled": 2000, "users_held_out": 500, "seeds": [22, 23], "settings": summary, "chosen": "bfloat16"}
    )
    assert "| bfloat16 | bfloat16 | no | 45 | 2.50x | 0.46500 | +3.50% (+2.00%, +5.00%) |" in table
