"""Training samples of the end-of-turn head (a2llm_ros.tools.training.end_of_turn)."""
from types import SimpleNamespace

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.tools.data.espeak import QUESTION_VOICES
from a2llm_ros.tools.training import end_of_turn as eot


class _LengthBackend:
    """Stands in for a model: the "hidden state" of a prompt is its wave's length."""

    model = SimpleNamespace(cfg=SimpleNamespace(llm=SimpleNamespace(hidden_size=1)))

    def rng(self, seed):
        return None

    def prefill(self, wave, pick, rng):
        return 0, np.array([float(len(wave))]), None

    def host(self, hidden):
        return hidden


def _longest_silence(wave: np.ndarray) -> int:
    quiet = np.abs(wave) <= 1e-3
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best


def test_paused_whole_question_has_a_silence_inside_and_is_deterministic():
    text = "How many legs does a spider have?"
    a = eot.paused_whole(text, QUESTION_VOICES[0], np.random.default_rng([16, 0, 3]))
    b = eot.paused_whole(text, QUESTION_VOICES[0], np.random.default_rng([16, 0, 3]))
    assert np.array_equal(a, b) and a.dtype == np.float32
    lo, hi = eot.PAUSED_WHOLE_S
    assert lo * SAMPLE_RATE <= _longest_silence(a) <= hi * SAMPLE_RATE + 400
    assert np.abs(a[:1600]).max() > 1e-3 and np.abs(a[-1600:]).max() > 1e-3  # trimmed parts


def test_training_set_labels_whole_paused_and_cut_questions():
    texts = ["What is your name?", "Hello"]  # 4 words and 1 word (no pause, no cut)
    X, y, voices = eot.training_set(_LengthBackend(), texts, QUESTION_VOICES[:2],
                                    progress=False)
    # per voice: text 1 whole + paused + 3 cuts, text 2 whole only
    assert len(y) == 2 * (5 + 1) and voices.tolist() == [0] * 6 + [1] * 6
    assert y.tolist() == [1, 1, 0, 0, 0, 1] * 2
    whole, paused, cuts = X[0, 0], X[1, 0], X[2:5, 0]
    assert paused > whole + eot.PAUSED_WHOLE_S[0] * SAMPLE_RATE * 0.9  # the inner silence
    assert (cuts < whole).all()


def test_fit_reads_the_tail_positions_it_was_trained_on():
    """Features [N, E, H]: the head records E and reads the last E rows of a longer tail;
    only the last position carries the label here, and the head finds it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2, 3))  # [N, E, H]
    y = (X[:, -1, 0] > 0).astype(np.float32)
    head = eot.fit(X, y, l2=0.1)
    assert head.positions == 2 and head.weight.shape == (6,)
    w = head.weight.reshape(2, 3)
    assert np.argmax(np.abs(w).reshape(-1)) == 3  # last position, first value
    longer = np.concatenate([rng.normal(size=(5, 3)), X[7]])  # [7, 3]: 5 rows before
    assert head.probability(longer) == head.probability(X[7])
    assert head.probability(X[y == 1][0]) > head.probability(X[y == 0][0])


def test_end_pointer_feature_reads_the_utterance_the_fast_end_pointer_cuts():
    """Measurement input: the segment of the last PauseStart of the fast profile's end-pointer
    (a question with a pause inside: the whole of it), and None when it hears no speech."""
    from a2llm_ros.tools.data.espeak import synthesize
    backend, rng = _LengthBackend(), np.random.default_rng(0)
    whole = synthesize("How many legs does a spider have?", QUESTION_VOICES[0]).audio
    paused = eot.paused_whole("How many legs does a spider have?", QUESTION_VOICES[0],
                              np.random.default_rng([16, 0, 3]))
    n_whole = float(eot.end_pointer_feature(backend, whole, rng)[-1, 0])
    n_paused = float(eot.end_pointer_feature(backend, paused, rng)[-1, 0])
    pad = eot.PAD_MS * SAMPLE_RATE / 1000
    assert len(whole) * 0.8 < n_whole < len(whole) + 4 * pad
    assert n_paused > n_whole + eot.PAUSED_WHOLE_S[0] * SAMPLE_RATE * 0.9  # not the first part
    assert eot.end_pointer_feature(backend, np.zeros(SAMPLE_RATE, np.float32), rng) is None


def test_end_pointer_segment_is_what_a_bag_carries_at_a_random_grid_place():
    """int16 samples (noise floor included), seeded, and a different place on the VAD's
    32 ms grid per draw: the segment's edges move with it."""
    from a2llm_ros.tools.data.espeak import synthesize
    whole = synthesize("How many legs does a spider have?", QUESTION_VOICES[0]).audio
    draws = [eot.end_pointer_segment(whole, np.random.default_rng(seed)) for seed in range(4)]
    again = eot.end_pointer_segment(whole, np.random.default_rng(0))
    assert np.array_equal(draws[0], again)
    scaled = draws[0].astype(np.float64) * 32768
    assert np.array_equal(scaled, np.round(scaled))  # int16 values
    assert np.abs(draws[0][:200]).max() > 0  # the noise floor before the speech
    onsets = {int(np.argmax(np.abs(d) > 0.05)) for d in draws}  # speech start in the cut
    assert len(onsets) > 1  # the cut moves against the speech: not one fixed grid place


def test_measure_only_rewrites_the_figures_and_keeps_the_head(default_model, tmp_path,
                                                              monkeypatch):
    """``--measure-only`` re-measures the head already there: weights and threshold stay,
    the figures are replaced; without a head it refuses (exit 2)."""
    import json
    import shutil

    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT
    from a2llm_ros.conversation.end_of_turn import HEAD_FILE
    assert eot.main(["--measure-only", "--out", str(tmp_path), "--no-progress"]) == 2
    shutil.copy(f"{DEFAULT_CHECKPOINT}/{HEAD_FILE}", tmp_path / HEAD_FILE)
    before = json.loads((tmp_path / HEAD_FILE).read_text())
    figures = {"questions": 1, "draws": 1, "pause_accepted_pct": 7.0, "end_accepted_pct": 93.0}
    voice = {"cuts": 1, "cut_accepted_pct": 0.0, "questions": 1, "draws": 1,
             "end_accepted_pct": 100.0}
    monkeypatch.setattr(eot, "_measured", lambda head, backend, texts: {
        "held_out_pause_fixture": figures, "held_out_voice": voice, "bench_voice": voice})
    assert eot.main(["--measure-only", "--out", str(tmp_path), "--no-progress"]) == 0
    after = json.loads((tmp_path / HEAD_FILE).read_text())
    assert {k: v for k, v in after.items() if k != "trained"} == \
        {k: v for k, v in before.items() if k != "trained"}
    assert after["trained"]["held_out_pause_fixture"] == figures
    assert after["trained"]["when"] == before["trained"]["when"] and "measured" in after["trained"]
