"""ROS-free conversation core wrapped by the ROS 2 nodes.

* :mod:`.vad` -- streaming voice-activity detection on 16 kHz audio (Silero
  VAD through onnxruntime, energy fallback), one probability per 32 ms chunk.
* :mod:`.turns` -- end-pointing: speech start, utterance end (silence after
  speech), blip rejection, forced end at a maximum length, pre-roll.
* :mod:`.listening` -- the 25 fps 58-D FLAME "attentive listener" motion shown
  whenever the avatar is not speaking (blinks, nods at pauses, gaze holding).
* :mod:`.session` -- :class:`~.session.ConversationSession`, the turn logic
  (idle -> listening -> thinking -> speaking -> idle, barge-in, error recovery)
  run by the a2llm node on a worker thread; outputs go to a sink object.

The audio message decoding lives in :mod:`a2llm_ros.audio.frontend` and the
FLAME -> robot/blendshape mapping in :mod:`a2llm_ros.retarget`.  Nothing here
imports ``rclpy`` or ``torch``.
"""
