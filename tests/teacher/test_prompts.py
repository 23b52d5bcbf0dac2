"""Teacher prompts: structure, the oracle only ever being the training target, versioning."""

from r2end_core.teacher import prompts
from r2end_core.teacher.kinds import KINDS


def test_oracle_prompt_has_history_target_and_requirements():
    p = prompts.oracle_prompt("1. 2014-01-30: Lip Balm; brand: Acme", "Rose Soap; brand: Acme", max_words=512)
    assert p.index("Purchase history:") < p.index("Target item:") < p.index("Requirements:")
    assert prompts.ORACLE_LEAD_IN in p and "no more than 512 words" in p and "one coherent paragraph" in p


def test_unguided_prompt_shows_no_target():
    p = prompts.unguided_prompt("1. Lip Balm")
    assert "Target item" not in p and prompts.NEXT_ITEM_MARKER in p


def test_item_prompt_prefers_reviews_and_says_when_there_is_no_evidence():
    with_reviews = prompts.item_prompt("Rose Soap", buyer_context_text="- Lip Balm", reviews_text="Smells great")
    assert "Smells great" in with_reviews and "Lip Balm" not in with_reviews
    bare = prompts.item_prompt("Rose Soap")
    assert prompts.NO_EVIDENCE in bare and bare.count(prompts.ITEM_LEAD_IN) == 1


def test_versions_are_per_kind_and_follow_the_text(monkeypatch):
    assert set(prompts.PROMPT_VERSIONS) == {"oracle", "unguided", "profile", "item"}
    assert len(set(prompts.PROMPT_VERSIONS.values())) == 4
    # the versions of the committed outputs: adding a kind leaves the others' as they were
    assert prompts.PROMPT_VERSIONS["oracle"] == "oracle-04e92ad296f8"
    before = prompts._version("oracle")
    monkeypatch.setitem(prompts.TEMPLATES, "oracle", prompts.ORACLE_TEMPLATE + " ")
    assert prompts._version("oracle") != before


def test_predicted_item_is_read_from_the_last_marker_line():
    assert prompts.extract_predicted_item("no marker here") is None
    assert prompts.extract_predicted_item("Predicted next item:\nmore") is None
    text = "Predicted next item: A\nthinking...\nPredicted next item: B"
    assert prompts.extract_predicted_item(text) == "B"


def test_the_profile_prompt_reads_the_training_history_only(prepared_tables):
    users, items = prepared_tables
    metadata = dict(zip(items["item_id"].to_pylist(), items["metadata_text"].to_pylist()))
    checked = 0
    for row in users.slice(0, 60).to_pylist():
        prompt = KINDS["profile"].prompt(row, metadata, 64)
        assert row["valid_history_text"] in prompt and prompts.PROFILE_LEAD_IN in prompt
        training = {metadata[i] for i in row["sequence"][:-2]}
        for held_out in (row["valid_target"], row["test_target"]):
            if metadata[held_out] not in training and not any(metadata[held_out] in t for t in training):
                assert metadata[held_out] not in prompt
                checked += 1
    assert checked > 60
