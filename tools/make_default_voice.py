"""Write the shipped default voice prompt of the Step-Audio-2 codec.

``python tools/make_default_voice.py [OUT]`` speaks :data:`TEXT` with the
project's robot espeak-ng voice and writes 16 kHz 16-bit mono PCM to
``a2llm_ros/assets/voice_default.wav`` (the file in the repository was made
this way).  The codec computes its prompt tokens, CAM++ speaker embedding and
prompt mel from it once per process.
"""
import os
import sys

import numpy as np

from a2llm_ros.audio.io import write_wav
from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.tools.data.espeak import ROBOT_VOICE, synthesize

TEXT = "Hello, I am your robot companion. It is nice to meet you, how can I help today?"
#: Silence kept before and after the speech (s).
MARGIN_S = 0.1


def main(out: str) -> None:
    audio = synthesize(TEXT, ROBOT_VOICE).audio.astype(np.float32)  # [N] 16 kHz
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    margin = int(MARGIN_S * SAMPLE_RATE)
    audio = audio[max(0, voiced[0] - margin):voiced[-1] + margin]
    audio = 0.5 * audio / np.abs(audio).max()
    write_wav(out, audio, SAMPLE_RATE)
    print(f"{out}: {len(audio) / SAMPLE_RATE:.2f} s")


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(root, "a2llm_ros", "assets", "voice_default.wav"))
