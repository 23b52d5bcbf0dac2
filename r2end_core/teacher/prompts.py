"""Teacher prompts (paper §3.1, §3.3, Appendix E), in our own words, versioned by content hash.

Four kinds:

``oracle``
    The user's history and the item they actually chose next (the training target, never a
    validation or test item); the teacher explains which preferences connect them.
``unguided``
    The history only; the teacher reasons and names the item it expects next (ablations 1-2).
``profile``
    The user's training history only (the most recent items before the validation target, never the
    validation or test item); the teacher describes the shopper's preferences, with no guess of a next
    item (profile distillation).
``item``
    An item's metadata and, where the dataset has no reviews, what its buyers had just bought
    before it (buyer context, training part only); the answer names who would prefer the item.

Oracle, profile and item answers are *prefilled*: the assistant turn starts with the fixed lead-in and the
teacher continues it, so the lead-in the paper requires is guaranteed even for a small teacher that
would ignore the instruction (``PREFILLS``, ``with_prefill``).

Every template's text feeds ``PROMPT_VERSIONS``, so any wording change gives new version hashes
and outputs made with different prompts are never mixed silently.
"""

from __future__ import annotations

import hashlib

ORACLE_LEAD_IN = "Here are the user's preferences that relate to the target item."
PROFILE_LEAD_IN = "This shopper's preferences:"
ITEM_LEAD_IN = "Users who prefer"
NEXT_ITEM_MARKER = "Predicted next item:"

ORACLE_TEMPLATE = """Task:
You are given a shopper's purchase history, oldest first, and the item they bought next (the target item).
Work out which of the shopper's preferences, visible in the history, explain the choice of the target item.

Purchase history:
{history}

Target item:
{target}

Requirements:
- Open with this exact sentence: "{lead_in}"
- Continue in one coherent paragraph of no more than {max_words} words that ties the history to the target item."""

UNGUIDED_TEMPLATE = """Task:
You are given a shopper's purchase history, oldest first. Reason about the shopper's preferences and predict the product they will buy next.

Purchase history:
{history}

Requirements:
- Write one paragraph of no more than {max_words} words about the shopper's preferences.
- End with a final line that starts with "{marker}" followed by the product's name, brand and category."""  # noqa: E501

PROFILE_TEMPLATE = """Task:
You are given a shopper's purchase history, oldest first. Write a profile of the shopper's tastes: the kinds of products, brands, ingredients or features, price level and purposes they favour, and anything they seem to avoid.

Purchase history:
{history}

Requirements:
- Open with this exact sentence: "{lead_in}"
- Continue in one paragraph of no more than {max_words} words that describes the shopper; do not repeat the list and do not guess what they buy next."""  # noqa: E501

ITEM_TEMPLATE = """Task:
Describe which kinds of shoppers are most likely to prefer the item below. Base the description on its metadata and on {evidence_kind}: favoured features, typical uses, practical benefits. Avoid generic statements.

Item metadata:
{metadata}

{evidence_title}:
{evidence}

Requirements:
- Begin with "{lead_in} ..." and name the preferences those shoppers share.
- Use one paragraph of no more than {max_words} words."""  # noqa: E501

NO_EVIDENCE = "(none recorded)"

TEMPLATES = {
    "oracle": ORACLE_TEMPLATE,
    "unguided": UNGUIDED_TEMPLATE,
    "profile": PROFILE_TEMPLATE,
    "item": ITEM_TEMPLATE,
}

#: The start of the assistant's answer, per kind (None: the teacher starts freely).
PREFILLS = {"oracle": ORACLE_LEAD_IN, "unguided": None, "profile": PROFILE_LEAD_IN, "item": ITEM_LEAD_IN}


def _version(kind: str) -> str:
    fixed = (TEMPLATES[kind], ORACLE_LEAD_IN, ITEM_LEAD_IN, NEXT_ITEM_MARKER, NO_EVIDENCE, str(PREFILLS[kind]))
    return kind + "-" + hashlib.sha256("\x00".join(fixed).encode()).hexdigest()[:12]


#: e.g. {"oracle": "oracle-3f2a9c0d1b7e", ...}; stored in every generated row.
PROMPT_VERSIONS = {kind: _version(kind) for kind in TEMPLATES}


def oracle_prompt(history_text: str, target_text: str, max_words: int = 512) -> str:
    """Oracle-guided reasoning prompt (paper Fig. 8).

    >>> p = oracle_prompt("1. 2014-01-30: Lip Balm", "Rose Soap; brand: Acme", max_words=100)
    >>> "Target item:\\nRose Soap; brand: Acme" in p and "no more than 100 words" in p
    True
    """
    return ORACLE_TEMPLATE.format(history=history_text, target=target_text, lead_in=ORACLE_LEAD_IN, max_words=max_words)


def unguided_prompt(history_text: str, max_words: int = 512) -> str:
    """History-only reasoning that ends by naming the expected next item.

    >>> "Target item" in unguided_prompt("1. Lip Balm")
    False
    """
    return UNGUIDED_TEMPLATE.format(history=history_text, max_words=max_words, marker=NEXT_ITEM_MARKER)


def profile_prompt(history_text: str, max_words: int = 512) -> str:
    """A profile of the shopper from their history alone.

    >>> p = profile_prompt("1. 2014-01-30: Lip Balm", max_words=80)
    >>> "Lip Balm" in p and "Target item" not in p and "no more than 80 words" in p
    True
    """
    return PROFILE_TEMPLATE.format(history=history_text, lead_in=PROFILE_LEAD_IN, max_words=max_words)


def item_prompt(metadata_text: str, buyer_context_text: str = "", reviews_text: str = "", max_words: int = 512) -> str:
    """Item description prompt (paper Fig. 9). Reviews are used when the dataset has them; otherwise
    the buyer context (items bought just before this one) stands in for them.

    >>> p = item_prompt("Rose Soap", buyer_context_text="- Lip Balm (bought just before by 3)")
    >>> "Items its buyers had bought just before it:\\n- Lip Balm" in p
    True
    >>> "Reviews of the item:\\ngreat" in item_prompt("Rose Soap", reviews_text="great")
    True
    """
    if reviews_text:
        kind, title, evidence = "what its reviewers wrote", "Reviews of the item", reviews_text
    else:
        kind, title, evidence = (
            "what its buyers had bought just before it",
            "Items its buyers had bought just before it",
            buyer_context_text,
        )
    return ITEM_TEMPLATE.format(
        evidence_kind=kind,
        metadata=metadata_text,
        evidence_title=title,
        evidence=evidence or NO_EVIDENCE,
        lead_in=ITEM_LEAD_IN,
        max_words=max_words,
    )


def chat_messages(kind: str, prompt: str) -> list[dict]:
    """The conversation sent to the teacher: the prompt, then the prefilled answer start if any.

    >>> [m["role"] for m in chat_messages("oracle", "...")], chat_messages("unguided", "...")[-1]["role"]
    (['user', 'assistant'], 'user')
    """
    messages = [{"role": "user", "content": prompt}]
    if PREFILLS[kind]:
        messages.append({"role": "assistant", "content": PREFILLS[kind]})
    return messages


def render_chat(tokenizer, kind: str, prompt: str) -> str:
    """The text the teacher reads: the chat template applied to ``chat_messages``, with a generation
    prompt after a user turn, and a prefilled answer left open for the teacher to continue."""
    prefilled = PREFILLS[kind] is not None
    return tokenizer.apply_chat_template(
        chat_messages(kind, prompt),
        tokenize=False,
        add_generation_prompt=not prefilled,
        continue_final_message=prefilled,
    )


def with_prefill(kind: str, continuation: str) -> str:
    """The whole answer: the prefill followed by what the teacher wrote after it.

    >>> with_prefill("item", " shoppers with dry skin")
    'Users who prefer shoppers with dry skin'
    >>> with_prefill("unguided", "They like lips.")
    'They like lips.'
    """
    return f"{PREFILLS[kind]} {continuation.strip()}" if PREFILLS[kind] else continuation


def extract_predicted_item(text: str) -> str | None:
    """The item an unguided answer names after ``NEXT_ITEM_MARKER`` (None if it names none).

    >>> extract_predicted_item("They like lips.\\nPredicted next item: Rose Lip Balm, Burt's")
    "Rose Lip Balm, Burt's"
    """
    for line in reversed(text.splitlines()):
        head, marker, rest = line.partition(NEXT_ITEM_MARKER)
        if marker and rest.strip():
            return rest.strip()
    return None


def truncate_words(text: str, max_words: int) -> tuple[str, bool]:
    """Cut a generation to ``max_words`` words; says whether it was cut.

    >>> truncate_words("a b c d", 3)
    ('a b c', True)
    """
    words = text.split()
    if len(words) <= max_words:
        return text.strip(), False
    return " ".join(words[:max_words]), True
