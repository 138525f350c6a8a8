"""Scale-out mode: the gateway over gRPC verifier replicas and a drafter service, with the real openai client."""

import openai
from gateway_testkit import API_KEY, MODEL, LiveServer, gateway_settings
from svc_helpers import drafter_server, verifier_server

from services.gateway.app import create_app
from services.gateway.remote import build_remote_engine
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM

PROMPT = "def add(a, b):"


def test_chat_through_grpc_services_equals_the_target(tiny_target_dir, start):
    target = CausalLM.from_pretrained(str(tiny_target_dir))
    replicas = [start(verifier_server(verifier=LocalVerifier(CausalLM.from_pretrained(str(tiny_target_dir)))))
                for _ in range(2)]
    drafter = start(drafter_server(NgramDrafter(max_block=4)))
    settings = gateway_settings(tiny_target_dir, verifier_urls=replicas, drafter_url=drafter)
    ids = target.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    [expected] = SpecEngine(LocalVerifier(target)).generate([ids], SamplingParams(max_tokens=16))
    with LiveServer(create_app(settings, engine=build_remote_engine(settings))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=16, temperature=0)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0, stream=True)
            if chunk.choices)
    text = target.tokenizer.decode(expected.output_ids, skip_special_tokens=True)
    assert reply.choices[0].message.content == streamed == text
    assert reply.usage.completion_tokens == len(expected.output_ids)
