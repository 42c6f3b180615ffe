"""The shared test configuration (tests/helpers.py) does what the tests rely on."""

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import random_inputs, stable_seed, top_two_logits
from oracle import admissible_keys, patch_distance

HERE = Path(__file__).resolve().parent


def test_stable_seed_is_the_same_in_every_process():
    """Unlike hash() of strings, stable_seed does not depend on the process's PYTHONHASHSEED."""
    parts = ("els", "zeros", "all", 3, (2, 3, 1, 4, 5))
    code = f"import helpers; print(helpers.stable_seed(*{parts!r}))"
    seeds = {int(subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, check=True,
                                env=dict(os.environ, PYTHONHASHSEED=h, PYTHONPATH=str(HERE))).stdout)
             for h in ("1", "2")}
    assert seeds == {stable_seed(*parts)}
    assert 0 <= stable_seed(*parts) < 2 ** 31 and stable_seed(*parts) != stable_seed("els", "zeros", "all", 5)


def test_random_inputs():
    z, data, sigma, logw = random_inputs(B=3, C=2, H=4, W=5, N=6, seed=1, sigma=(0.5, 2.0), logw=True,
                                         remove_every=4)
    assert z.shape == (3, 2, 4, 5) and data.shape == (6, 2, 4, 5) and logw.shape == (6, 4, 5)
    assert data.abs().max() <= 1 and sigma.tolist() == [0.5, 2.0, 0.5]
    removed = torch.isinf(logw.view(-1))
    assert removed.nonzero().view(-1).tolist() == list(range(0, 120, 4))
    # the same draws whatever the dtype: float32 is the float64 problem rounded
    z32, data32, _, logw32 = random_inputs(B=3, C=2, H=4, W=5, N=6, seed=1, sigma=(0.5, 2.0), logw=True,
                                           remove_every=4, dtype=torch.float32)
    assert z32.dtype == torch.float32 and torch.equal(z32, z.float()) and torch.equal(data32, data.float())
    assert torch.equal(logw32, logw.float())
    assert random_inputs(N=3, mode="ideal", logw=True)[3].shape == (3,)
    # noisy queries are a training image plus sigma_b noise; gaussian ones are unrelated to the data
    z, data, sigma, _ = random_inputs(B=2, N=4, seed=2, sigma=(1e-6, 1e-6))
    assert min((z[0] - d).abs().max() for d in data) < 1e-4
    zg = random_inputs(B=2, N=4, seed=2, query="gaussian", query_scale=1.5)[0]
    assert zg.std() > 1


def test_top_two_logits_match_a_brute_force_loop():
    """helpers.top_two_logits against every admissible logit listed with tests/oracle.py."""
    z, data, sigma, _ = random_inputs(B=2, C=2, H=4, W=5, N=3, seed=3, query="gaussian")
    for mode, boundary, keys in (("els", "zeros", "all"), ("els", "circular", "valid"), ("local", "circular", "all"),
                                 ("ideal", "zeros", "all")):
        logw = random_inputs(B=2, C=2, H=4, W=5, N=3, seed=4, logw=True, mode=mode)[3]
        first, second = top_two_logits(z, data, sigma, 3, mode, boundary, keys, logw)
        for b in range(2):
            for r in range(4):
                for c in range(5):
                    if mode == "ideal":
                        logits = [-float(((z[b] - data[mu]) ** 2).sum()) / (2 * float(sigma[b]) ** 2) + float(logw[mu])
                                  for mu in range(3)]
                    else:
                        logits = [-patch_distance(z[b], (r, c), data[mu], key, 3, boundary) / (2 * float(sigma[b]) ** 2)
                                  + float(logw[mu, key[0], key[1]])
                                  for mu in range(3) for key in admissible_keys((r, c), 4, 5, 3, mode, boundary, keys)]
                    top = sorted(logits, reverse=True)
                    assert math.isclose(float(first[b, r, c]), top[0], rel_tol=1e-12, abs_tol=1e-12)
                    assert math.isclose(float(second[b, r, c]), top[1], rel_tol=1e-12, abs_tol=1e-12)
