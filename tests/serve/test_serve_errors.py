"""Every bad input gets its status code and an OpenAI-style error JSON naming the problem; a full queue gets 429
with Retry-After; a client that disconnects mid-stream frees its row."""
import re
import threading
import time
import urllib.request

import openai
import pytest
from serve_helpers import ADMIN, http_json, running_server, slow_lane_steps

GOOD = {"model": "tiny", "prompt": "The quick brown", "max_tokens": 4}
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60  # > 512 positions with the tiny tokenizer


def _bad(**changes):
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


COMPLETION_CASES = [  # (body, status, words the message must contain, param)
    (_bad(user="nobody", rgd={"rule": "args"}), 404, ["unknown user 'nobody'"], "user"),
    (_bad(user="nobody", rgd={"rule": "token", "k": 3}), 404, ["unknown user 'nobody'"], "user"),
    (_bad(model="gpt-9"), 404, ["model 'gpt-9' does not exist", "'tiny'"], "model"),
    (_bad(model=...), 400, ["'model'"], "model"),
    (_bad(user="u01", rgd={"rule": "args", "k": 0}), 400, ["k must be", "got 0"], "rgd.k"),
    (_bad(user="u01", rgd={"rule": "args", "k": 5000}), 400, ["k must be in [1, 1024]", "5000"], "rgd.k"),
    (_bad(user="u01", rgd={"rule": "args", "k": 400}), 400, ["k=400", "vocabulary"], "rgd.k"),
    (_bad(user="u01", rgd={"rule": "args", "w": "high"}), 400, ["weight must be a number", "'high'"], "rgd.w"),
    (_bad(user="u01", rgd={"rule": "args", "w": 1e9}), 400, ["weight must be a finite number"], "rgd.w"),
    (_bad(user="u01", rgd={"rule": "logratio"}), 400, ["'logratio' is not served", "args, token"], "rgd.rule"),
    (_bad(user="u01", rgd={"rule": "args", "temperature": 1}), 400, ["unknown rgd field", "temperature"], "rgd"),
    (_bad(rgd=[1, 2]), 400, ["'rgd' must be an object"], "rgd"),
    (_bad(prompt=LONG_PROMPT), 400, ["positions", "max_position_embeddings", "512"], "prompt"),
    (_bad(prompt=...), 400, ["'prompt' must be a string"], "prompt"),
    (_bad(prompt=""), 400, ["'prompt' is empty"], "prompt"),
    (_bad(prompt=["a", "b"]), 400, ["'prompt' must be a string"], "prompt"),
    (_bad(max_tokens=0), 400, ["'max_tokens' must be an integer >= 1", "0"], "max_tokens"),
    (_bad(max_tokens=505), 400, ["max_new_tokens 505", "512"], "prompt"),
    (_bad(temperature=0.7), 400, ["temperature=0.7 is not supported", "greedily"], "temperature"),
    (_bad(n=2), 400, ["n=2 is not supported"], "n"),
    (_bad(stop=[""]), 400, ["stop string 0 must be a non-empty string"], "stop"),
    (_bad(stop=5), 400, ["'stop' must be a string or a list"], "stop"),
    (_bad(stream="yes"), 400, ["'stream' must be true or false"], "stream"),
    (_bad(user=""), 400, ["'user' must be a non-empty string"], "user"),
]


@pytest.mark.parametrize("case", COMPLETION_CASES, ids=lambda c: c[2][0][:40])
def test_bad_completion_requests(server, case):
    body, status, words, param = case
    got, err, _ = http_json("POST", server[0] + "/v1/completions", body)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["error"]["message"], err
    assert err["error"]["param"] == param


def test_prompt_too_long_has_the_openai_code(server):
    _, err, _ = http_json("POST", server[0] + "/v1/completions", _bad(prompt=LONG_PROMPT))
    assert err["error"]["code"] == "context_length_exceeded" and err["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("messages,words", [
    ([], ["'messages' must be a non-empty list"]),
    ([{"role": "robot", "content": "hi"}], ["messages[0] must be an object with role"]),
    ([{"role": "user", "content": 5}], ["messages[0].content must be a string"]),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], ["only text parts"]),
])
def test_bad_chat_messages(server, messages, words):
    got, err, _ = http_json("POST", server[0] + "/v1/chat/completions", {"model": "tiny", "messages": messages})
    assert got == 400
    for w in words:
        assert w in err["error"]["message"]


def test_body_that_is_not_json_and_unknown_routes(server):
    got, err, _ = http_json("POST", server[0] + "/v1/completions", raw=b"{not json")
    assert got == 400 and "not valid JSON" in err["error"]["message"]
    got, err, _ = http_json("POST", server[0] + "/v1/completions", ["a list"])
    assert got == 400 and "must be a JSON object" in err["error"]["message"]
    got, err, _ = http_json("GET", server[0] + "/v1/nothing")
    assert got == 404 and "/v1/nothing" in err["error"]["message"]


@pytest.mark.parametrize("method,path,body,headers,status,words", [
    ("GET", "/v1/heads", None, {}, 401, ["admin token"]),
    ("GET", "/v1/heads", None, {"Authorization": "Bearer wrong"}, 401, ["admin token"]),
    ("PUT", "/v1/heads/x?kind=sequence", {"weight": [1.0]}, {"X-Admin-Token": ADMIN}, 400, ["shape (1,)", "'x'"]),
    ("PUT", "/v1/heads/x?kind=sequence", {"weight": [float("nan")] * 64}, {"X-Admin-Token": ADMIN}, 400,
     ["NaN or inf"]),
    ("PUT", "/v1/heads/x?kind=sequence", {"weights": []}, {"X-Admin-Token": ADMIN}, 400, ["unknown ['weights']"]),
    ("PUT", "/v1/heads/x?kind=token", {"P": [[0.0] * 64] * 3}, {"X-Admin-Token": ADMIN}, 400, ["missing ['Q']"]),
    ("PUT", "/v1/heads/x", {"weight": [0.0] * 64}, {"X-Admin-Token": ADMIN}, 400, ["?kind=", "sequence, token"]),
    ("PUT", "/v1/heads/x?kind=lora", {"weight": [0.0] * 64}, {"X-Admin-Token": ADMIN}, 400, ["no 'lora' head bank"]),
    ("DELETE", "/v1/heads/ghost?kind=sequence", None, {"X-Admin-Token": ADMIN}, 404, ["unknown user 'ghost'"]),
])
def test_bad_admin_requests(server, method, path, body, headers, status, words):
    got, err, _ = http_json(method, server[0] + path, body, headers)
    assert got == status, err
    for w in words:
        assert w in err["error"]["message"], err


def test_api_key_no_admin_token_and_default_user(tiny_dirs, bank_files, tmp_path, reference):
    import shutil

    seq = tmp_path / "heads.safetensors"
    shutil.copy(bank_files["ref"][0], seq)
    with running_server("--model", str(tiny_dirs["llama"]), "--served-model-name", "tiny", "--heads", str(seq),
                        "--api-key", "k3y", "--default-user", "u01") as (url, _):
        got, err, _ = http_json("GET", url + "/v1/heads", None, {"Authorization": "Bearer k3y"})
        assert got == 403 and "--admin-token" in err["error"]["message"]
        got, err, _ = http_json("POST", url + "/v1/completions", GOOD)
        assert got == 401 and "API key" in err["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        assert client.completions.create(**GOOD).usage.completion_tokens == 4
        got, err, _ = http_json("POST", url + "/v1/completions", {**GOOD, "user": "u01", "rgd": {"rule": "token"}},
                                {"Authorization": "Bearer k3y"})
        assert got == 400 and "--token-heads" in err["error"]["message"]
        rgd = {"rule": "args", "k": 4, "w": 2.0}  # an unknown user decodes with the configured default head
        got = client.completions.create(**{**GOOD, "max_tokens": 10}, user="stranger", extra_body={"rgd": rgd})
        assert got.model_extra["rgd"]["token_ids"] == reference(GOOD["prompt"], 10, user="u01", rgd=rgd).token_ids
        assert got.model_extra["rgd"]["token_ids"] != reference(GOOD["prompt"], 10, user="u02", rgd=rgd).token_ids


def test_full_queue_gets_429_and_a_disconnected_stream_frees_its_row(tiny_dirs, reference, monkeypatch):
    # 20 ms a step: the 500-token request cannot finish before the test closes its stream
    slow_lane_steps(monkeypatch, 0.02)
    with running_server("--model", str(tiny_dirs["llama"]), "--served-model-name", "tiny", "--max-batch", "1",
                        "--max-queue", "1") as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        long = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=500, stream=True,
                                         extra_body={"ignore_eos": True})
        next(iter(long))
        assert state.scheduler.rows == 1
        queued = {}
        waiter = threading.Thread(target=lambda: queued.update(
            r=client.completions.create(model="tiny", prompt="Breaking news:", max_tokens=6)))
        waiter.start()
        deadline = time.monotonic() + 30
        while state.scheduler.queue_depth < 1:
            assert time.monotonic() < deadline and waiter.is_alive()
            time.sleep(0.01)
        got, err, headers = http_json("POST", url + "/v1/completions", GOOD)
        assert got == 429 and headers.get("retry-after", headers.get("Retry-After")) == "1"
        assert "too many requests" in err["error"]["message"] and err["error"]["type"] == "rate_limit_error"
        long.close()  # the client goes away mid-stream: its row is freed and the queued request runs
        waiter.join(60)
        assert queued["r"].model_extra["rgd"]["token_ids"] == reference("Breaking news:", 6).token_ids
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        assert 'rgd_requests_total{outcome="cancelled"} 1' in text
        assert 'rgd_requests_total{outcome="rejected"} 1' in text
        generated = float(re.search(r"^rgd_generated_tokens_total (\S+)$", text, re.M).group(1))
        assert generated < 500  # the cancelled request stopped long before its 500 tokens
        while state.scheduler.rows:  # the worker updates the count right after delivering the last token
            assert time.monotonic() < deadline
            time.sleep(0.01)
