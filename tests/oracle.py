"""Brute-force float64 oracle written literally from the definitions of docs/theory.md §3.1-3.3 and §3.7 (tiny inputs only).

Deliberately shares no code with the package: patches are read pixel by pixel with
the zero-extension / wrap rule, and the admissible set is the spec's sentence.
"""

import math

import torch


def read_pixel(img, ch, r, c, boundary):
    """img [C, H, W]; zero extension or wrap-around."""
    _, H, W = img.shape
    if boundary == "circular":
        return float(img[ch, r % H, c % W])
    if 0 <= r < H and 0 <= c < W:
        return float(img[ch, r, c])
    return 0.0


def patch_distance(a, x, b, y, P, boundary):
    m = (P - 1) // 2
    total = 0.0
    for ch in range(a.shape[0]):
        for dr in range(-m, m + 1):
            for dc in range(-m, m + 1):
                d = read_pixel(a, ch, x[0] + dr, x[1] + dc, boundary) - read_pixel(b, ch, y[0] + dr, y[1] + dc, boundary)
                total += d * d
    return total


def admissible_keys(x, H, W, P, mode, boundary, keys):
    """Key centres y admissible for query pixel x (docs/theory.md §3.2, §3.3)."""
    m = (P - 1) // 2
    r, c = x
    if mode == "local":
        return [(r, c)]
    if boundary == "circular":
        if keys == "all":
            return [(a, b) for a in range(H) for b in range(W)]
        return [(a, b) for a in range(m, H - m) for b in range(m, W - m)]
    edge_row = r < m or r > H - 1 - m
    edge_col = c < m or c > W - 1 - m
    rows = [r] if edge_row else list(range(m, H - m))
    cols = [c] if edge_col else list(range(m, W - m))
    return [(a, b) for a in rows for b in cols]


def literal_softmax_mean(logits: list, centres: list, ids: list):
    """``(sum_k w_k centre_k, log sum_k e^{l_k}, id of the first largest logit)``, ``w = softmax(logits)``,
    one key at a time in Python floats."""
    mx = max(logits)
    w = [math.exp(l - mx) for l in logits]
    s = sum(w)
    return sum(wi * ci for wi, ci in zip(w, centres)) / s, mx + math.log(s), ids[logits.index(mx)]


def nonfinite_softmax_mean(logits: list, centres: list):
    """``(x0, lse)`` of one pixel under the non-finite rule (csrc/cuda/NOTES.md, "Non-finite inputs"):
    a NaN logit makes both NaN; no finite logit gives ``x0 = NaN``, ``lse = -inf``; otherwise the
    softmax mean with IEEE products (``0 * inf = NaN``). ``centres``: float64 tensors ``[C]``."""
    if any(math.isnan(l) for l in logits) or all(l == -math.inf for l in logits):
        return math.nan, (math.nan if any(math.isnan(l) for l in logits) else -math.inf)
    m = max(logits)
    w = torch.tensor([math.exp(l - m) for l in logits], dtype=torch.float64)
    return (w[:, None] * torch.stack(centres)).sum(0) / w.sum(), m + math.log(float(w.sum()))


def nonfinite_pattern(t: torch.Tensor) -> torch.Tensor:
    """``[3, *t.shape]``: where ``t`` is NaN, +inf, -inf."""
    t = t.detach().cpu()
    return torch.stack([torch.isnan(t), t == float("inf"), t == float("-inf")])


def assert_nonfinite_like(actual, expected, what, tol):
    """Same NaN/+inf/-inf entries as ``expected``, the finite ones within ``tol``."""
    pa, pe = nonfinite_pattern(actual), nonfinite_pattern(expected)
    assert torch.equal(pa, pe), (f"{what}: NaN/+inf/-inf at {pa.flatten(1).sum(1).tolist()} entries, "
                                 f"expected {pe.flatten(1).sum(1).tolist()}")
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual.detach().cpu().double()[finite], expected[finite], **tol)


def oracle(z, data, sigma, P, mode, boundary="zeros", keys="all", key_logw=None):
    """Returns (x0_hat [B,C,H,W], lse [B,H,W], best (mu, y_flat) [B,H,W,2]) in float64."""
    z = z.double()
    data = data.double()
    B, C, H, W = z.shape
    N = data.shape[0]
    sig = [float(s) for s in (sigma if torch.is_tensor(sigma) else [sigma] * B)]
    out = torch.zeros(B, C, H, W, dtype=torch.float64)
    lse = torch.zeros(B, H, W, dtype=torch.float64)
    best = torch.zeros(B, H, W, 2, dtype=torch.int64)
    for b in range(B):
        if mode == "ideal":
            logits = []
            for mu in range(N):
                d = float(((z[b] - data[mu]) ** 2).sum())
                logits.append(-d / (2 * sig[b] ** 2) + (float(key_logw[mu]) if key_logw is not None else 0.0))
            mx = max(logits)
            w = [math.exp(l - mx) for l in logits]
            s = sum(w)
            img = sum(wi * data[mu] for mu, wi in enumerate(w)) / s
            out[b] = img
            lse[b] = mx + math.log(s)
            mu_best = logits.index(mx)
            for r in range(H):
                for c in range(W):
                    best[b, r, c] = torch.tensor([mu_best, r * W + c])
            continue
        for r in range(H):
            for c in range(W):
                logits, centres, ids = [], [], []
                for mu in range(N):
                    for (a, bb) in admissible_keys((r, c), H, W, P, mode, boundary, keys):
                        d = patch_distance(z[b], (r, c), data[mu], (a, bb), P, boundary)
                        l = -d / (2 * sig[b] ** 2)
                        if key_logw is not None:
                            l += float(key_logw[mu, a, bb])
                        logits.append(l)
                        centres.append(data[mu, :, a, bb])
                        ids.append((mu, a * W + bb))
                out[b, :, r, c], lse[b, r, c], best_id = literal_softmax_mean(logits, centres, ids)
                best[b, r, c] = torch.tensor(best_id)
    return out, lse, best


def partner_window_distance(a, qa, b, qb, P2, boundary):
    """|Pi2_qa a - Pi2_qb b|^2 with partners qa, qb as (row, col) or None (the zero window)."""
    m = (P2 - 1) // 2
    total = 0.0
    for ch in range(a.shape[0]):
        for dr in range(-m, m + 1):
            for dc in range(-m, m + 1):
                va = 0.0 if qa is None else read_pixel(a, ch, qa[0] + dr, qa[1] + dc, boundary)
                vb = 0.0 if qb is None else read_pixel(b, ch, qb[0] + dr, qb[1] + dc, boundary)
                total += (va - vb) ** 2
    return total


def paired_oracle(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary="zeros", keys="all"):
    """The paired-patch machine of docs/theory.md §3.7, literally: (x0_hat, lse, best (mu, y)) in float64."""
    z = z.double()
    data = data.double()
    B, C, H, W = z.shape
    N = data.shape[0]
    sig = [float(s) for s in sigma]

    def loc(flat):
        flat = int(flat)
        return None if flat < 0 else (flat // W, flat % W)

    out = torch.zeros(B, C, H, W, dtype=torch.float64)
    lse = torch.zeros(B, H, W, dtype=torch.float64)
    best = torch.zeros(B, H, W, 2, dtype=torch.int64)
    for b in range(B):
        for r in range(H):
            for c in range(W):
                q = loc(query_partner[b, r, c])
                logits, centres, ids = [], [], []
                for mu in range(N):
                    for (a, bb) in admissible_keys((r, c), H, W, P, "els", boundary, keys):
                        d = patch_distance(z[b], (r, c), data[mu], (a, bb), P, boundary)
                        d2 = partner_window_distance(z[b], q, data[mu], loc(key_partner[mu, a, bb]), P2, boundary)
                        logits.append(-(d + beta * d2) / (2 * sig[b] ** 2))
                        centres.append(data[mu, :, a, bb])
                        ids.append((mu, a * W + bb))
                out[b, :, r, c], lse[b, r, c], best_id = literal_softmax_mean(logits, centres, ids)
                best[b, r, c] = torch.tensor(best_id)
    return out, lse, best
