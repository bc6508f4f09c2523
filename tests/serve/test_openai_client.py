"""The official openai client against a running rgd-serve: every answer equals Engine.generate of that request
alone (token ids and text), plain and reward-guided, completions and chat, streamed and not."""
import openai
import pytest
from serve_helpers import http_json

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council",
           "How to cook pasta: boil water"]


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _stream_completion(client, **kw):
    text, ids, reasons = "", [], []
    for chunk in client.completions.create(stream=True, **kw):
        text += chunk.choices[0].text
        ids += chunk.model_extra["rgd"]["token_ids"]
        reasons.append(chunk.choices[0].finish_reason)
    return text, ids, reasons


CASES = [  # (prompt index, user, rgd)
    (0, None, None),
    (1, "u01", {"rule": "args", "k": 4, "w": 1.5}),
    (2, "u02", {"rule": "token", "k": 6, "w": 2.0}),
    (3, "u03", {"rule": "args", "k": 10, "w": 0}),  # w = 0: plain decoding, as Engine.generate
]


@pytest.mark.parametrize("case", CASES, ids=["plain", "args", "token", "w0"])
def test_completions_equal_engine_generate(client, reference, case):
    i, user, rgd = case
    ref = reference(PROMPTS[i], 14, user=user, rgd=rgd)
    kw = dict(model="tiny", prompt=PROMPTS[i], max_tokens=14, user=user, extra_body={"rgd": rgd} if rgd else None)
    resp = client.completions.create(**kw)
    assert resp.model_extra["rgd"]["token_ids"] == ref.token_ids
    assert resp.choices[0].text == ref.text
    assert resp.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert resp.usage.completion_tokens == len(ref.token_ids)
    text, ids, reasons = _stream_completion(client, **kw)
    assert (text, ids) == (ref.text, ref.token_ids)
    assert reasons[-1] == resp.choices[0].finish_reason and set(reasons[:-1]) <= {None}


def test_reward_guidance_changes_tokens(client, reference):
    """The guided cases above would be vacuous if the heads did not change the tokens."""
    plain = reference(PROMPTS[1], 14)
    guided = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=14, user="u01",
                                       extra_body={"rgd": {"rule": "args", "k": 4, "w": 1.5}})
    assert guided.model_extra["rgd"]["token_ids"] != plain.token_ids


def test_stop_strings_cut_text_and_streamed_deltas_add_up(client, reference):
    ref = reference(PROMPTS[0], 30, stop=("mo",), ignore_eos=True)
    assert ref.finish_reason == "stop"
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=30, stop=["mo"], extra_body={"ignore_eos": True})
    assert client.completions.create(**kw).choices[0].text == ref.text
    text, ids, _ = _stream_completion(client, **kw)
    assert (text, ids) == (ref.text, ref.token_ids)


@pytest.mark.parametrize("rgd", [None, {"rule": "token", "k": 5, "w": 1.0}, {"rule": "args", "k": 3, "w": 3.0}],
                         ids=["plain", "token", "args"])
def test_chat_equals_engine_generate(client, reference, rgd):
    user = "u04" if rgd else None
    ref = reference(PROMPTS[2], 12, user=user, rgd=rgd, chat=True)
    kw = dict(model="tiny", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=12, user=user,
              extra_body={"rgd": rgd} if rgd else None)
    resp = client.chat.completions.create(**kw)
    assert resp.choices[0].message.content == ref.text
    assert resp.model_extra["rgd"]["token_ids"] == ref.token_ids
    text, ids, roles = "", [], []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            roles.append(chunk.choices[0].delta.role)
            ids += chunk.model_extra["rgd"]["token_ids"]
        else:
            assert chunk.usage.completion_tokens == len(ref.token_ids)
    assert (text, ids) == (ref.text, ref.token_ids)
    assert roles[0] == "assistant"


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = http_json("GET", server[0] + "/health")[1]
    assert health["status"] == "ok" and health["model"] == "tiny"
