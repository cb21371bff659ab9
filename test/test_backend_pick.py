"""The graph backends' token choice on the host (engines/backend.py): masks, banned and
forced ids, greedy, top-k, and the full-logit path agreeing with the ranked-token path."""
import numpy as np

from a2llm_ros.engines.backend import Pick, pick_from_host_logits, pick_from_top

V = 40
LOGITS = np.linspace(0.0, 3.9, V)[::-1].copy()  # id 0 most likely, id 39 least
MASKS = {"text": np.arange(V) < 20, "speech": np.arange(V) >= 20}


def test_greedy_masks_banned_and_forced():
    rng = np.random.default_rng(0)
    assert pick_from_host_logits(LOGITS, Pick(), MASKS, rng) == 0
    assert pick_from_host_logits(LOGITS, Pick(allowed="speech"), MASKS, rng) == 20
    assert pick_from_host_logits(LOGITS, Pick(allowed="speech", banned=20), MASKS, rng) == 21
    assert pick_from_host_logits(LOGITS, Pick(forced=7, temperature=1.0), MASKS, rng) == 7
    ids = np.argsort(-LOGITS)[:5]
    assert pick_from_top(LOGITS[ids], ids, Pick(), rng) == 0


def test_top_k_draws_only_the_k_most_likely_and_is_reproducible():
    pick = Pick(temperature=1.0, top_k=3, allowed="speech")
    draws = [pick_from_host_logits(LOGITS, pick, MASKS, np.random.default_rng(s))
             for s in range(200)]
    assert set(draws) == {20, 21, 22}
    again = [pick_from_host_logits(LOGITS, pick, MASKS, np.random.default_rng(s))
             for s in range(200)]
    assert draws == again
    # the graph's ranked tokens (masked in-graph) give the same draws for the same seed
    ids = np.arange(20, 20 + 8)
    ranked = [pick_from_top(LOGITS[ids], ids, pick, np.random.default_rng(s))
              for s in range(200)]
    assert ranked == draws


def test_top_k_zero_samples_the_whole_masked_vocabulary():
    pick = Pick(temperature=5.0, top_k=0, allowed="text")
    draws = {pick_from_host_logits(LOGITS, pick, MASKS, np.random.default_rng(s))
             for s in range(400)}
    assert draws <= set(range(20)) and len(draws) > 15
