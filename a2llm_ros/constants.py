"""Rates and sizes shared by every component.

All times inside a turn are derived from these counts, never from wall clock:
one speech token covers ``SAMPLES_PER_SPEECH_TOKEN`` samples (40 ms), five
speech tokens make one motion segment (200 ms) which decodes to five FLAME
frames.
"""

#: Sample rate of the model's audio input and output (Hz).
SAMPLE_RATE = 16_000
#: Log-mel frame rate of the audio front-end (Hz): 10 ms hop.
MEL_HOP = 160
MEL_WINDOW = 400
MEL_FRAME_RATE = SAMPLE_RATE // MEL_HOP  # 100 Hz
#: Audio-encoder output rate (Hz) before the adaptor, as in Step-Audio-2.
AUDIO_ENCODER_RATE = 25
#: Adaptor output rate fed to the LLM (Hz).
AUDIO_ADAPTOR_RATE = 12.5
#: Speech-token rate of the LLM's audio output (Hz).
SPEECH_TOKEN_RATE = 25
SAMPLES_PER_SPEECH_TOKEN = SAMPLE_RATE // SPEECH_TOKEN_RATE  # 640 samples = 40 ms
#: FLAME animation frame rate (frames per second).
FLAME_FPS = 25
#: Motion tokens: one latent every 5 FLAME frames (25 -> 5 Hz).
MOTION_TOKEN_RATE = 5
FRAMES_PER_SEGMENT = FLAME_FPS // MOTION_TOKEN_RATE  # 5 frames = 200 ms
SPEECH_TOKENS_PER_SEGMENT = SPEECH_TOKEN_RATE // MOTION_TOKEN_RATE  # 5 tokens
SEGMENT_SECONDS = FRAMES_PER_SEGMENT / FLAME_FPS  # 0.2 s
#: Audio samples per FLAME frame at the model's rate (640 = 40 ms).
SAMPLES_PER_FRAME = SAMPLE_RATE // FLAME_FPS
#: Nanoseconds per second (ROS header stamps).
NS_PER_S = 1_000_000_000
#: Shortest question the model accepts (seconds of audio).
MIN_QUESTION_SECONDS = 0.1

#: File names inside an A²-LLM checkpoint directory (config, weights, tokenizer, LoRA folder).
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, LORA_DIR = (
    "config.json", "model.safetensors", "tokenizer.json", "lora")
