"""Triton kernels of the hot ops (run on GPU, or on CPU under TRITON_INTERPRET=1).

Launch configuration and buffer allocation live in launch.py; this module only holds the kernels.
"""
import triton
import triton.language as tl


@triton.jit
def lmhead_partial_kernel(h_ptr, w_ptr, part_m_ptr, part_s_ptr, part_v_ptr, part_i_ptr, B, V, D, KC,
                          BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Stage 1 of lmhead_topk: one program = one V-block x one B-block.

    z[b, v] = h[b] . W[v]                    (a [BLOCK_B, BLOCK_V] tile, never written to memory)
    m_c[b] = max_v z,  s_c[b] = sum_v exp(z - m_c)   -> part_m/part_s [B, NB]
    top-KC of z per row by (value desc, id asc), KC rounds of "take the max, lowest id among equals"
                                              -> part_v/part_i [B, NB, KC] (id -1 = no entry)
    """
    pid_v = tl.program_id(0)
    pid_b = tl.program_id(1)
    nb = tl.num_programs(0)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_b < B
    v_ok = offs_v < V
    acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        h = tl.load(h_ptr + offs_b.to(tl.int64)[:, None] * D + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_v.to(tl.int64)[:, None] * D + offs_d[None, :],
                    mask=v_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        # ieee: full fp32 products (tf32 would miss the 1e-5 parity with the reference)
        acc += tl.dot(h, tl.trans(w), input_precision="ieee")
    neg_inf = float("-inf")
    taken = (offs_b[:, None] < 0) | (~v_ok[None, :])  # [BLOCK_B, BLOCK_V]; padding counts as taken
    z = tl.where(taken, neg_inf, acc)
    m = tl.max(z, axis=1)
    m_safe = tl.where(m == neg_inf, 0.0, m)  # an all -inf block gives (-inf, 0), not NaN
    s = tl.sum(tl.exp(z - m_safe[:, None]), axis=1)
    part = offs_b.to(tl.int64) * nb + pid_v  # [BLOCK_B] index into [B, NB]
    tl.store(part_m_ptr + part, m, mask=row_ok)
    tl.store(part_s_ptr + part, s, mask=row_ok)
    big = 2147483647
    for r in range(0, KC):
        zr = tl.where(taken, neg_inf, z)
        mr = tl.max(zr, axis=1)
        idx = tl.min(tl.where((~taken) & (zr == mr[:, None]), offs_v[None, :], big), axis=1)
        found = idx < big
        tl.store(part_v_ptr + part * KC + r, tl.where(found, mr, neg_inf), mask=row_ok)
        tl.store(part_i_ptr + part * KC + r, tl.where(found, idx, -1).to(tl.int64), mask=row_ok)
        taken = taken | (offs_v[None, :] == idx[:, None])


@triton.jit
def lmhead_merge_kernel(in_m_ptr, in_s_ptr, in_v_ptr, in_i_ptr, out_m_ptr, out_s_ptr, out_v_ptr, out_i_ptr,
                        N_IN, K_IN, GROUP, N_OUT, K_OUT,
                        FINAL: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr):
    """One merge round of lmhead_topk (settings.py plans the rounds): one program = row b x group g, the lists
    c in [g * GROUP, min((g + 1) * GROUP, N_IN)) of row b (inputs [B, N_IN] and [B, N_IN, K_IN]).

    m = max_c m_c,  s = sum_c s_c * exp(m_c - m)
    top-K_OUT over the group's entries by (value desc, id asc); id -1 = no entry.
    FINAL (one group per row): out_m[b] = lse = m + log(s), out_v = value - lse ([B, K]), out_i = ids.
    else: out_m/out_s [B, N_OUT] = (m, s), out_v/out_i [B, N_OUT, K_OUT] = the merged list (-inf, -1 padded).
    """
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    neg_inf = float("-inf")
    c0 = g * GROUP
    n = tl.minimum(N_IN - c0, GROUP)  # lists in this group
    offs_g = tl.arange(0, BLOCK_G)
    m_c = tl.load(in_m_ptr + b * N_IN + c0 + offs_g, mask=offs_g < n, other=neg_inf)
    s_c = tl.load(in_s_ptr + b * N_IN + c0 + offs_g, mask=offs_g < n, other=0.0)
    m = tl.max(m_c, axis=0)
    m_safe = tl.where(m == neg_inf, 0.0, m)  # an all -inf group gives (-inf, 0), not nan
    s = tl.sum(tl.where(m_c == neg_inf, 0.0, s_c * tl.exp(m_c - m_safe)), axis=0)
    lse = tl.where(m == neg_inf, neg_inf, m + tl.log(s))
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < n * K_IN
    base = (b * N_IN + c0) * K_IN
    v = tl.load(in_v_ptr + base + offs_c, mask=c_ok, other=neg_inf)
    ids = tl.load(in_i_ptr + base + offs_c, mask=c_ok, other=-1)
    taken = ids < 0
    big = 9223372036854775807
    out = (b * N_OUT + g) * K_OUT
    for r in range(0, K_OUT):
        vr = tl.where(taken, neg_inf, v)
        mr = tl.max(vr, axis=0)
        best = tl.min(tl.where((~taken) & (vr == mr), ids, big), axis=0)
        found = best < big
        if FINAL:
            tl.store(out_v_ptr + out + r, mr - lse)
        else:
            tl.store(out_v_ptr + out + r, tl.where(found, mr, neg_inf))
        tl.store(out_i_ptr + out + r, tl.where(found, best, -1))
        taken = taken | (ids == best)
    if FINAL:
        tl.store(out_m_ptr + b, lse)
    else:
        tl.store(out_m_ptr + b * N_OUT + g, m)
        tl.store(out_s_ptr + b * N_OUT + g, s)


@triton.jit
def select_index(s, k_ok, offs_k, rnd, tau, SAMPLE: tl.constexpr):
    """Chosen index along the last axis of the scores s ([BLOCK_K] or [R, BLOCK_K]; k_ok masks the padding).

    rnd: the uniform draw, a scalar or [R, 1] (used only when SAMPLE). Result: a scalar or [R] (int32).
    greedy: first argmax of s.  sample: p_j = exp((s_j - max s) / tau), chosen = first j with
    cumsum(p)_j > rnd * sum(p); no hit (rounding) -> last j with p_j > 0.
    A -inf score is never chosen unless the whole row is -inf: then 0. The result is always in [0, K), even
    for nan scores.
    """
    neg_inf = float("-inf")
    s = tl.where(k_ok, s, neg_inf)
    m = tl.max(s, axis=-1, keep_dims=True)
    big = 2147483647
    if SAMPLE:
        m = tl.where(m == neg_inf, 0.0, m)  # an all -inf row: every p_j = 0 (-> index 0), not nan
        p = tl.where(k_ok, tl.exp((s - m) / tau), 0.0)
        c = tl.cumsum(p, axis=-1)
        target = rnd * tl.max(c, axis=-1, keep_dims=True)  # cumsum of p >= 0: its max is the total
        first_hit = tl.min(tl.where((c > target) & k_ok, offs_k, big), axis=-1)
        last_nonzero = tl.max(tl.where((p > 0) & k_ok, offs_k, 0), axis=-1)
        idx = tl.where(first_hit < big, first_hit, last_nonzero)
    else:
        idx = tl.min(tl.where((s == m) & k_ok, offs_k, big), axis=-1)
        idx = tl.where(idx < big, idx, 0)  # no s_j equals the max only when it is nan: stay in range
    return idx


@triton.jit
def score_select_kernel(cand_ptr, bank_w_ptr, bank_b_ptr, slot_ptr, logprob_ptr, weight_ptr, rand_ptr,
                        chosen_ptr, scores_ptr, rewards_ptr, B, K, D, tau,
                        SAMPLE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """ARGS score + select; one program = BLOCK_R rows b, each with head u = slot[b].

    r_j = W_u . c_j + b_u (0 when u = -1),  s_j = logprob_j + weight_b * r_j
    -inf rule (as gather_score_select_kernel): logprob_j = -inf -> s_j = -inf whatever weight_b and r_j.
    greedy: first argmax of s.  sample: p_j = exp((s_j - max s) / tau), chosen = first j with
    cumsum(p)_j > rand_b * sum(p); no hit (rounding) -> last j with p_j > 0.
    """
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    r_ok = offs_r < B
    k_ok = offs_k < K
    rk_ok = r_ok[:, None] & k_ok[None, :]  # [BLOCK_R, BLOCK_K]
    u = tl.load(slot_ptr + offs_r, mask=r_ok, other=-1)
    has_head = u >= 0
    u_safe = tl.where(has_head, u, 0)
    row_k = offs_r[:, None] * K + offs_k[None, :]  # [BLOCK_R, BLOCK_K] index into [B, K]
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        c = tl.load(cand_ptr + row_k[:, :, None] * D + offs_d[None, None, :],
                    mask=rk_ok[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)  # [R, K, BLOCK_D]
        w = tl.load(bank_w_ptr + u_safe[:, None] * D + offs_d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [R, BLOCK_D]
        acc += tl.sum(c * w[:, None, :], axis=2)
    bias = tl.load(bank_b_ptr + u_safe, mask=r_ok, other=0.0).to(tl.float32)
    r = tl.where(has_head[:, None], acc + bias[:, None], 0.0)
    lp = tl.load(logprob_ptr + row_k, mask=rk_ok, other=0.0)
    wb = tl.load(weight_ptr + offs_r, mask=r_ok, other=0.0)
    out_of_support = lp == float("-inf")
    s = tl.where(out_of_support, float("-inf"), lp + wb[:, None] * tl.where(out_of_support, 0.0, r))
    tl.store(rewards_ptr + row_k, r, mask=rk_ok)
    tl.store(scores_ptr + row_k, s, mask=rk_ok)
    if SAMPLE:
        rnd = tl.load(rand_ptr + offs_r, mask=r_ok, other=0.0)[:, None]
    else:  # greedy launches pass a 1-element placeholder for rand: never read it
        rnd = 0.0
    idx = select_index(s, k_ok, offs_k, rnd, tau, SAMPLE)
    tl.store(chosen_ptr + offs_r, idx.to(tl.int64), mask=r_ok)


@triton.jit
def gather_score_select_kernel(q_ptr, emb_ptr, ids_ptr, offset_ptr, logprob_ptr, weight_ptr, rand_ptr,
                               chosen_ptr, scores_ptr, rewards_ptr, K, D, ratio, tau,
                               SAMPLE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Token-level score + select; one program = one row b, candidate token ids v_j = cand_ids[b, j].

    r_j = E_{v_j} . q_b + offset_b - ratio * logprob_j,  s_j = logprob_j + weight_b * r_j
    selection as in score_select_kernel (select_index).
    -inf rule: the ratio term only when ratio != 0; logprob_j = -inf -> s_j = -inf, never chosen (all -inf -> 0).
    """
    b = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    ids = tl.load(ids_ptr + b * K + offs_k, mask=k_ok, other=0)  # [BLOCK_K] int64: row offsets below are 64-bit
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        e = tl.load(emb_ptr + ids[:, None] * D + offs_d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BLOCK_K, BLOCK_D]
        q = tl.load(q_ptr + b * D + offs_d, mask=d_ok, other=0.0)  # [BLOCK_D]
        acc += tl.sum(e * q[None, :], axis=1)
    lp = tl.load(logprob_ptr + b * K + offs_k, mask=k_ok, other=0.0)
    r = acc + tl.load(offset_ptr + b)
    if ratio != 0.0:  # ratio 0 never multiplies a -inf logprob
        r = r - ratio * lp
    out_of_support = lp == float("-inf")
    # The score of a -inf logprob is -inf whatever the weight and reward (w * r would be 0 * inf or inf - inf).
    s = tl.where(out_of_support, float("-inf"), lp + tl.load(weight_ptr + b) * tl.where(out_of_support, 0.0, r))
    tl.store(rewards_ptr + b * K + offs_k, r, mask=k_ok)
    tl.store(scores_ptr + b * K + offs_k, s, mask=k_ok)
    if SAMPLE:
        rnd = tl.load(rand_ptr + b)
    else:  # greedy launches pass a 1-element placeholder for rand: never read it
        rnd = 0.0
    tl.store(chosen_ptr + b, select_index(s, k_ok, offs_k, rnd, tau, SAMPLE).to(tl.int64))
