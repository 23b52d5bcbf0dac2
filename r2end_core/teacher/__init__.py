"""Stage 1, generate: the teacher LLM (its sources), its prompts, the kinds of output it writes, and the
bookkeeping that makes a generation run resumable exactly once."""
