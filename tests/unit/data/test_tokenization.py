"""Chat-template tokenisation and the loss mask: assistant content + end-of-turn, nothing else."""

import pytest
from transformers import AutoTokenizer

from specserve.data.errors import DataFormatError
from specserve.data.prompts import Message, PromptRow
from specserve.data.tokenization import ChatTokenizer, tokenize_rows

# Qwen3's behaviour in miniature: the last assistant turn carries an (empty) think block, earlier ones do not
THINK_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' and loop.last %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ m.content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_target_dir):
    return AutoTokenizer.from_pretrained(tiny_target_dir)


def row(*pairs, index=0):
    return PromptRow(index, index + 1, tuple(Message(role, content) for role, content in pairs))


def masked_spans(tokenizer, tokenized):
    """The decoded runs of consecutive loss-masked tokens."""
    spans, current = [], []
    for token, m in zip(tokenized.input_ids.tolist(), tokenized.loss_mask.tolist()):
        if m:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_loss_mask_on_a_chat_example(tokenizer, chat_rows):
    chat = ChatTokenizer(tokenizer)
    assert chat.end_of_turn == "<|im_end|>"
    out = chat(chat_rows[0])  # system, user, assistant "4", user, assistant "6"
    assert masked_spans(tokenizer, out) == ["4<|im_end|>", "6<|im_end|>"]
    assert tokenizer.decode(out.input_ids.tolist()) == chat.render(chat_rows[0].messages)
    assert out.input_ids.dtype.name == "int32" and out.loss_mask.dtype.name == "uint8"


def test_template_inserted_think_block_is_not_supervised(tokenizer):
    tokenizer.chat_template = THINK_TEMPLATE
    convo = row(("user", "q1"), ("assistant", "first answer"), ("user", "q2"), ("assistant", "second answer"))
    out = ChatTokenizer(tokenizer)(convo)
    assert masked_spans(tokenizer, out) == ["first answer<|im_end|>", "second answer<|im_end|>"]
    assert "<think>" in tokenizer.decode(out.input_ids.tolist())


def test_short_answers_are_not_found_in_role_headers(tokenizer):
    convo = row(("user", "t"), ("assistant", "t"), ("user", "a"), ("assistant", "a"), ("user", "x"),
                ("assistant", ""))
    assert masked_spans(tokenizer, ChatTokenizer(tokenizer)(convo)) == ["t<|im_end|>", "a<|im_end|>",
                                                                        "<|im_end|>"]


def test_truncation(tokenizer, chat_rows):
    full = ChatTokenizer(tokenizer)(chat_rows[0])
    short = ChatTokenizer(tokenizer, max_length=10)(chat_rows[0])
    assert len(short) == 10
    assert short.input_ids.tolist() == full.input_ids[:10].tolist()
    assert short.loss_mask.tolist() == full.loss_mask[:10].tolist()


def test_unmatched_template_row_reports_file_and_line(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n"
                               "{% endfor %}")
    chat = ChatTokenizer(tokenizer)
    rows = [row(("user", "Q"), ("assistant", "FINE"), index=0), row(("user", "q"), ("assistant", "lower"), index=1)]
    skipped = []
    kept = list(tokenize_rows(rows, chat, "data.jsonl", on_error="skip", skipped=skipped))
    assert [r.index for r in kept] == [0] and skipped[0].line == 2
    with pytest.raises(DataFormatError, match=r"^data\.jsonl:2: "):
        list(tokenize_rows(rows, chat, "data.jsonl", on_error="stop"))
