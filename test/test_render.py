"""``a2llm render`` and the renderer: H.264/AAC MP4s whose picture follows the sound,
from a flame.npz + WAV pair or from a bag; shading, mouth interior and blinks."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile

from a2llm_ros.tools.cli import main
from a2llm_ros.constants import FLAME_FPS, NS_PER_S, SAMPLE_RATE
from a2llm_ros.flame.appearance import SCLERA_RGB
from a2llm_ros.flame.layout import DEFAULT_LAYOUT as LAYOUT
from a2llm_ros.flame.mesh import FlameMesh
from a2llm_ros.tools.render.raster import FaceRenderer, view_bounds
from a2llm_ros.tools.render.timeline import Clip, load_bag
from a2llm_ros.tools.render.video import probe

SECONDS = 2.0
N_FRAMES = int(SECONDS * FLAME_FPS)  # 50
OPEN_FRAMES = range(25, 35)  # 1.0-1.4 s: the only time the mouth opens and the sound is on
JAW_OPEN = 0.3  # rad
SIZE = 128  # video pixels (fast)
DARK = 40  # 8-bit level below which a pixel counts as the dark mouth interior


@pytest.fixture(scope="module")
def mesh():
    return FlameMesh()


def _frames_and_wave():
    """FLAME frames [50, 58] with the jaw open in OPEN_FRAMES, and a tone [32000] there only."""
    frames = np.zeros((N_FRAMES, LAYOUT.dim), np.float32)
    frames[list(OPEN_FRAMES), LAYOUT.jaw.start] = JAW_OPEN
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    on = (t >= OPEN_FRAMES.start / FLAME_FPS) & (t < OPEN_FRAMES.stop / FLAME_FPS)
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * on).astype(np.float32)
    return frames, wave


def _dark_fraction(images: np.ndarray) -> np.ndarray:
    """Fraction [K] of near-black pixels in each image [K, H, W, 3]."""
    return (images < DARK).all(-1).mean((1, 2))


def _read_video(path) -> np.ndarray:
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def _check_streams(path, seconds: float) -> None:
    info = probe(path)
    assert sorted(info.streams) == [("audio", "aac"), ("video", "h264")], info.streams
    assert abs(info.video_s - info.audio_s) < 0.2, info
    assert abs(info.audio_s - seconds) < 0.1, info
    assert abs(info.video_frames - FLAME_FPS * seconds) <= 1, info


def test_render_cli_writes_h264_aac_in_sync(tmp_path, capsys):
    frames, wave = _frames_and_wave()
    np.savez(tmp_path / "flame.npz", frames=frames)
    soundfile.write(tmp_path / "answer.wav", wave, SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / "video.mp4"
    rc = main(["render", "--flame", str(tmp_path / "flame.npz"), "--audio",
               str(tmp_path / "answer.wav"), "--out", str(out), "--size", str(SIZE),
               "--no-progress"])
    assert rc == 0 and "50 frames at 25 fps" in capsys.readouterr().out
    _check_streams(out, SECONDS)
    video = _read_video(out)  # [K, H, W, 3]
    assert video.shape == (N_FRAMES, SIZE, SIZE, 3)
    dark = _dark_fraction(video)  # the open mouth shows its dark interior
    threshold = (dark.min() + dark.max()) / 2
    assert dark.max() > 3 * dark.min() + 1e-3
    assert list(np.nonzero(dark > threshold)[0]) == list(OPEN_FRAMES)


def test_render_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["render", "--flame", str(tmp_path / "x.npz"), "--out",
                 str(tmp_path / "v.mp4")]) == 1
    assert "--audio" in capsys.readouterr().err
    assert main(["render", "--bag", str(tmp_path), "--out", str(tmp_path / "v.mp4"),
                 "--size", "100"]) == 2


def test_video_frame_k_shows_the_stamp_of_audio_sample_k():
    frame_ns = NS_PER_S // FLAME_FPS
    stamps = 5 * NS_PER_S + np.arange(100) * frame_ns  # FLAME starts 7 frames before audio
    clip = Clip(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, np.arange(100)[:, None],
                stamps, int(stamps[7]) + 3_000_000)  # + 3 ms: the nearest stamp still wins
    assert clip.n_video_frames == FLAME_FPS
    np.testing.assert_array_equal(clip.frame_indices(), 7 + np.arange(FLAME_FPS))
    short = Clip(np.zeros(SAMPLE_RATE + 1, np.float32), SAMPLE_RATE, np.zeros((3, 1)))
    assert short.n_video_frames == FLAME_FPS + 1  # ceil: the last sample gets a frame
    np.testing.assert_array_equal(short.frame_indices()[2:], 2)  # held on the last frame


def _bag_with_answer(path, frames, wave, t0_ns):
    """A bag like a2llm demo's: FlameChunk frames from 0.4 s before t0, speech from t0."""
    from a2llm_ros.tools.bags import types as T
    from a2llm_ros.tools.bags.export import encode_pcm
    from a2llm_ros.tools.bags.io import BagWriter

    store = T.typestore_for(T.ROS_DRIVERS)
    frame_ns = NS_PER_S // FLAME_FPS
    lead = 10  # listening frames before the answer
    all_frames = np.concatenate([np.zeros((lead, frames.shape[1]), np.float32), frames])

    def header(ns):
        time_type = store.types["builtin_interfaces/msg/Time"]
        stamp = time_type(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)
        return store.types["std_msgs/msg/Header"](stamp=stamp, frame_id="head")

    with BagWriter(path) as writer:
        writer.write("/speech/audio_info", store.types[T.AUDIO_INFO](
            channels=1, sample_rate=SAMPLE_RATE, sample_format="S16LE",
            bitrate=16 * SAMPLE_RATE, coding_format="wave"), t0_ns - NS_PER_S)
        for c in range(0, len(all_frames), 5):
            start = t0_ns + (c - lead) * frame_ns
            msgs = [store.types[T.FLAME_FRAME](
                header=header(start + i * frame_ns), flame_version=2020, turn_id=1,
                expression=f[:50], jaw_pose=f[50:53], head_rotation=f[53:56],
                eyelids=f[56:58], eye_pose=np.zeros(6, np.float32))
                for i, f in enumerate(all_frames[c:c + 5])]
            writer.write("/flame/chunks", store.types[T.FLAME_CHUNK](
                header=msgs[0].header, frame_rate=float(FLAME_FPS), turn_id=1,
                first_frame_index=c, source=0, frames=msgs), start)
        chunk = SAMPLE_RATE // 5  # 200 ms of audio per message
        for at in range(0, len(wave), chunk):
            ns = t0_ns + at * NS_PER_S // SAMPLE_RATE
            data = np.frombuffer(encode_pcm(wave[at:at + chunk], "S16LE"), np.uint8)
            writer.write("/speech/audio_stamped", store.types[T.AUDIO_DATA_STAMPED](
                header=header(ns), audio=store.types[T.AUDIO_DATA](data=data)), ns)


def test_render_from_a_bag(tmp_path):
    frames, wave = _frames_and_wave()
    t0 = 1_800_000_000 * NS_PER_S
    bag = tmp_path / "bag"
    _bag_with_answer(bag, frames, wave, t0)
    clip = load_bag(bag)
    assert clip.audio_t0_ns == t0 and clip.sample_rate == SAMPLE_RATE
    np.testing.assert_allclose(clip.wave, wave, atol=1 / 16000)
    np.testing.assert_array_equal(clip.video_frames(), frames)  # frame k <-> sample k * 640
    out = tmp_path / "bag.mp4"
    assert main(["render", "--bag", str(bag), "--out", str(out), "--size", str(SIZE),
                 "--no-progress"]) == 0
    _check_streams(out, SECONDS)


def test_open_mouth_is_dark_inside_and_blinks_hide_the_eyes(mesh):
    frames = np.zeros((3, LAYOUT.dim))
    frames[1, LAYOUT.jaw.start] = JAW_OPEN
    frames[2, LAYOUT.dim - 2:] = 1.0  # both eyelids closed
    verts = mesh.vertices(frames)
    renderer = FaceRenderer(mesh, 160, view_bounds(mesh, verts), supersample=1)
    eyes = renderer.eye_open(verts)
    np.testing.assert_allclose(eyes, [[1, 1], [1, 1], [0, 0]], atol=1e-6)
    images = np.stack(list(renderer.frames(frames))).astype(int)  # [3, H, W, 3]
    dark = _dark_fraction(images)
    assert dark[1] > 0.01 and dark[1] > 5 * dark[0]  # the open mouth reads as open
    eyes_xy = renderer._to_samples(mesh.regions.points(verts[0], range(19, 31)))  # [12, 2]
    (left, top), (right, bottom) = eyes_xy.min(0).astype(int), eyes_xy.max(0).astype(int) + 1
    box = images[:, top:bottom, left:right]  # [3, h, w, 3] both eyes
    white = (np.abs(box - np.array(SCLERA_RGB) * 255).max(-1) < 50).mean((1, 2))
    assert white[0] > 0.1 and white[2] < 0.1 * white[0]  # closed lids hide the eyes
    # smooth shading: the skin holds many tones (flat shading has about one per face)
    face = images[0][40:120, 40:120].reshape(-1, 3)
    assert len(np.unique(face, axis=0)) > 500


def test_a_model_file_without_eyelid_blendshapes_renders_and_blinks(tmp_path, capsys):
    """A FLAME-2020-like model file (no l_eyelid/r_eyelid): lids close through expressions."""
    import dataclasses

    from a2llm_ros.flame.head_model import EXPRESSION_NAMES, build_head
    model = tmp_path / "model.npz"
    dataclasses.replace(build_head().arrays, eyelids=None).save_npz(str(model))
    other = FlameMesh(str(model))
    frames = np.zeros((3, LAYOUT.dim))
    blink = EXPRESSION_NAMES.index("eyelid_close")
    frames[1:, blink] = (1.0, 3.0)
    verts = other.vertices(frames)
    eyes = FaceRenderer(other, 64, view_bounds(other, verts), 1).eye_open(verts)  # [3, 2]
    assert not other.has_eyelids and (np.diff(eyes, axis=0) < -0.1).all() and eyes[0, 0] == 1
    frames_v, wave = _frames_and_wave()
    np.savez(tmp_path / "flame.npz", frames=frames_v[:6])
    soundfile.write(tmp_path / "a.wav", wave[:SAMPLE_RATE * 2 // 5], SAMPLE_RATE)
    out = tmp_path / "model.mp4"
    assert main(["render", "--flame", str(tmp_path / "flame.npz"), "--audio",
                 str(tmp_path / "a.wav"), "--out", str(out), "--model", str(model),
                 "--size", "64", "--no-progress"]) == 0
    assert probe(out).video_frames == 10  # 0.4 s of audio; the last of 6 frames held
