"""16 concurrent clients (mixed users, rules, lengths, streamed or not) each get exactly their solo
Engine.generate answer; live head updates follow the snapshot rule (a request keeps the head it was accepted
with); head admin endpoints and the bank save."""
import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from serve_helpers import ADMIN, USERS, http_json, slow_lane_steps

from rgd_engine import GenerationConfig
from rgd_engine.heads import load_bank

PROMPTS = ["The quick brown fox", "Reward guided decoding", "Breaking news: the city council",
           "How to cook pasta", "Scientists discover a new species", "Headline: Stocks rally"]
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _metric(url: str, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client, job):
    """One request as the openai client sends it -> (text, token ids)."""
    kw = dict(model="tiny", prompt=job["prompt"], max_tokens=job["n"], user=job["user"],
              extra_body={**({"rgd": job["rgd"]} if job["rgd"] else {}), "ignore_eos": job["ignore_eos"]})
    if not job["stream"]:
        r = client.completions.create(**kw)
        return r.choices[0].text, r.model_extra["rgd"]["token_ids"]
    text, ids = "", []
    for chunk in client.completions.create(stream=True, **kw):
        text += chunk.choices[0].text
        ids += chunk.model_extra["rgd"]["token_ids"]
    return text, ids


def test_sixteen_concurrent_clients_each_get_their_solo_answer(server, reference):
    url, _ = server
    rgds = [None, {"rule": "args", "k": 4, "w": 2.0}, {"rule": "token", "k": 4, "w": 1.5},
            {"rule": "args", "k": 4, "w": 0.5}, {"rule": "args", "k": 6, "w": 1.0}]
    jobs = [{"prompt": PROMPTS[i % len(PROMPTS)], "user": USERS[i % len(USERS)], "rgd": rgds[i % len(rgds)],
             "n": 3 + (i * 7) % 40, "ignore_eos": i % 3 != 0, "stream": i % 2 == 0} for i in range(16)]
    refs = [reference(j["prompt"], j["n"], user=j["user"], rgd=j["rgd"], ignore_eos=j["ignore_eos"]) for j in jobs]
    steps0, tokens0 = _metric(url, "rgd_decode_steps_total"), _metric(url, "rgd_generated_tokens_total")
    ok0 = _metric(url, 'rgd_requests_total{outcome="ok"}')
    client = _client(url)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda j: _ask(client, j), jobs))
    for job, ref, (text, ids) in zip(jobs, refs, answers):
        assert (text, ids) == (ref.text, ref.token_ids), job
    steps = _metric(url, "rgd_decode_steps_total") - steps0
    tokens = _metric(url, "rgd_generated_tokens_total") - tokens0
    assert tokens == sum(len(r.token_ids) for r in refs)  # none lost, none duplicated
    assert _metric(url, 'rgd_requests_total{outcome="ok"}') - ok0 == 16
    assert tokens / steps > 2, "requests were not batched together"


def _reference_with_head(reference, user, W, b, prompt, n, rgd):
    bank = reference.engine.new_bank(capacity=2)
    bank.add(user, W, b)
    cfg = GenerationConfig(max_new_tokens=n, k=rgd["k"], weight=rgd["w"], rule="args", ignore_eos=True)
    return reference.engine.generate([prompt], users=[user], heads=bank, config=cfg)[0].token_ids


def test_head_swap_under_load_keeps_each_request_on_its_admission_head(server, reference, monkeypatch):
    # 15 ms a step: a 120-token request is surely still running when the head changes
    slow_lane_steps(monkeypatch, 0.015)
    url, state = server
    d = reference.engine.hidden_size
    g = torch.Generator().manual_seed(7)
    head_a, head_b = torch.randn(d, generator=g) * 3, torch.randn(d, generator=g) * 3
    rgd, prompt, n = {"rule": "args", "k": 6, "w": 4.0}, PROMPTS[1], 120
    ref_a = _reference_with_head(reference, "swapper", head_a, 0.5, prompt, n, rgd)
    ref_b = _reference_with_head(reference, "swapper", head_b, -0.5, prompt, n, rgd)
    assert ref_a != ref_b  # the heads steer differently, so the test can tell them apart
    status, put, _ = http_json("PUT", url + "/v1/heads/swapper?kind=sequence",
                               {"weight": head_a.tolist(), "bias": 0.5}, AUTH)
    assert status == 201 and put["created"]
    client = _client(url)
    kw = dict(model="tiny", prompt=prompt, max_tokens=n, user="swapper", extra_body={"rgd": rgd, "ignore_eos": True})
    before = client.completions.create(stream=True, **kw)
    chunks = iter(before)
    first = next(chunks)
    assert state.scheduler.rows >= 1
    status, put, _ = http_json("PUT", url + "/v1/heads/swapper?kind=sequence",
                               {"weight": head_b.tolist(), "bias": -0.5}, AUTH)
    assert status == 200 and not put["created"] and put["version"] > 0
    assert state.scheduler.rows >= 1, "the first request finished before the swap; the test proves nothing"
    after = client.completions.create(**kw)
    ids = first.model_extra["rgd"]["token_ids"] + [t for c in chunks for t in c.model_extra["rgd"]["token_ids"]]
    assert ids == ref_a
    assert after.model_extra["rgd"]["token_ids"] == ref_b
    # DELETE: an accepted request keeps its snapshot; a new one for the user is refused.
    pending = client.completions.create(stream=True, **kw)
    chunks = iter(pending)
    first = next(chunks)
    status, deleted, _ = http_json("DELETE", url + "/v1/heads/swapper?kind=sequence", None, AUTH)
    assert status == 200 and deleted["deleted"]
    assert state.scheduler.rows >= 1, "the request finished before the delete; the test proves nothing"
    ids = first.model_extra["rgd"]["token_ids"] + [t for c in chunks for t in c.model_extra["rgd"]["token_ids"]]
    assert ids == ref_b
    with pytest.raises(openai.NotFoundError, match="unknown user 'swapper'"):
        client.completions.create(**kw)


def test_head_admin_endpoints_and_atomic_save(server, reference, bank_files):
    url, _ = server
    status, listing, _ = http_json("GET", url + "/v1/heads", None, AUTH)
    assert status == 200
    assert set(listing["banks"]) == {"sequence", "token"}
    assert set(USERS) <= set(listing["banks"]["sequence"]["users"])
    version = listing["banks"]["token"]["version"]
    d = reference.engine.hidden_size
    P, Q = torch.ones(3, d) * 0.01, torch.ones(3, d) * 0.02
    status, put, _ = http_json("PUT", url + "/v1/heads/newbie?kind=token", {"P": P.tolist(), "Q": Q.tolist()}, AUTH)
    assert status == 201 and put["version"] == version + 1
    status, saved, _ = http_json("POST", url + "/v1/heads/save", None, AUTH)
    assert status == 200 and saved["saved"]["token"] == str(bank_files["server"][1])
    on_disk = load_bank(bank_files["server"][1])
    assert torch.equal(on_disk.head("newbie")[0], P) and torch.equal(on_disk.head("newbie")[1], Q)
    # a safetensors upload replaces the head
    from safetensors.torch import save as save_safetensors

    raw = save_safetensors({"P": (P * 2).contiguous(), "Q": Q.contiguous()})
    status, put, _ = http_json("PUT", url + "/v1/heads/newbie?kind=token", raw=raw, headers=AUTH,
                               content_type="application/octet-stream")
    assert status == 200 and not put["created"]
    status, _, _ = http_json("DELETE", url + "/v1/heads/newbie?kind=token", None, AUTH)
    assert status == 200


def test_metrics_are_prometheus_text(server):
    import urllib.request

    url, _ = server
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    for name in ("rgd_requests_total", "rgd_tokens_per_second", "rgd_batch_occupancy", "rgd_queue_depth",
                 "rgd_head_swaps_total", "rgd_generated_tokens_total"):
        assert f"# TYPE {name} " in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[a-z]+"\})? -?[0-9.e+]+', line), line
