"""The real `openai` client against a running gateway: greedy output is the target's, usage adds up."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from gateway_testkit import API_KEY, MODEL
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["def add(a, b):", "import os\nprint(", "hello world hello"]


@pytest.fixture(scope="module")
def reference(tiny_target_dir):
    """Greedy continuation by the target itself (`model.generate`), as (token ids, text)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_target_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_target_dir)

    def greedy(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
        ids = out[0, len(prompt_ids):].tolist()
        return ids, tokenizer.decode(ids, skip_special_tokens=True)

    return greedy, tokenizer


def _same_text(api_text: str, ref_text: str) -> bool:
    # the incremental detokenizer never emits a trailing incomplete UTF-8 character; decode() shows it as U+FFFD
    return api_text == ref_text or api_text == ref_text.rstrip("\ufffd")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_greedy_equals_target(client, reference, prompt):
    greedy, tokenizer = reference
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids, text = greedy(prompt_ids, 24)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert _same_text(out.choices[0].text, text)
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert out.usage.completion_tokens == len(ids)
    assert out.usage.total_tokens == len(prompt_ids) + len(ids)
    assert out.choices[0].finish_reason == ("length" if len(ids) == 24 else "stop")

    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert _same_text("".join(c.choices[0].text for c in chunks if c.choices), text)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == out.choices[0].finish_reason


def test_completion_token_id_prompt(client, reference):
    greedy, tokenizer = reference
    prompt_ids = tokenizer(PROMPTS[0])["input_ids"]
    _, text = greedy(prompt_ids, 12)
    out = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=12, temperature=0)
    assert _same_text(out.choices[0].text, text) and out.usage.prompt_tokens == len(prompt_ids)


def test_chat_greedy_equals_target(client, reference):
    greedy, tokenizer = reference
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               enable_thinking=False, return_dict=False)
    ids, text = greedy(list(prompt_ids), 20)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=20, temperature=0,
                                         user="someone", store=False, metadata={"k": "v"}, logprobs=False)
    assert out.choices[0].message.role == "assistant"
    assert _same_text(out.choices[0].message.content, text)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt_ids), len(ids))

    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert _same_text("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), text)
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids) and chunks[-1].usage.completion_tokens == len(ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_are_seeded_and_reproducible(client):
    kwargs = dict(model=MODEL, prompt="hello world", max_tokens=10, temperature=1.0, top_p=0.9,
                  extra_body={"top_k": 50, "ignore_eos": True})
    three = client.completions.create(n=3, seed=7, **kwargs)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.usage.completion_tokens == 30
    again = client.completions.create(n=3, seed=7, **kwargs)
    assert [c.text for c in again.choices] == [c.text for c in three.choices]
    for j in range(3):  # choice j is the single request seeded seed + j
        single = client.completions.create(n=1, seed=7 + j, **kwargs)
        assert single.choices[0].text == three.choices[j].text

    streamed = list(client.completions.create(n=2, seed=7, stream=True, **kwargs))
    texts = ["".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == j) for j in (0, 1)]
    assert texts == [c.text for c in three.choices[:2]]


def test_batched_prompts(client):
    out = client.completions.create(model=MODEL, prompt=PROMPTS[:2], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text and out.choices[2].text == out.choices[3].text


def test_stop_string_ends_the_text(client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0).choices[0].text
    stop = full[3:5]
    if not stop.strip("\ufffd"):
        pytest.skip("no usable stop string in this continuation")
    out = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == full[: full.index(stop)]


def test_models_health_ready_metrics(gateway, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    for path in ("/health", "/ready", "/metrics"):  # public: no key needed
        assert httpx.get(gateway.url + path).status_code == 200
    client.completions.create(model=MODEL, prompt="hello", max_tokens=8, temperature=0)
    text = httpx.get(gateway.url + "/metrics").text
    for name in ("spec_decode_num_drafts_total", "spec_decode_num_draft_tokens_total",
                 "spec_decode_num_accepted_tokens_total", "num_requests_running", "num_requests_waiting",
                 "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "e2e_request_latency_seconds_bucket", "spec_decode_verify_batch_size_bucket",
                 "spec_decode_scheduled_budget_bucket"):
        assert f"specserve:{name}" in text, name
    success = [line for line in text.splitlines() if line.startswith("specserve:request_success_total")]
    assert success and sum(float(line.split()[-1]) for line in success) >= 1


def test_api_keys(gateway):
    for key, code in ((None, "missing_api_key"), ("wrong", "invalid_api_key")):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        r = httpx.post(gateway.url + "/v1/completions", headers=headers, content=b"{not json")
        assert r.status_code == 401 and r.json()["error"]["code"] == code
        assert r.headers["www-authenticate"] == "Bearer"
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    ok = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
