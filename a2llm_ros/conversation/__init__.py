"""ROS-free conversation core wrapped by the ROS 2 nodes.

* :mod:`.vad` -- streaming voice-activity detection on 16 kHz audio (Silero
  VAD through onnxruntime, energy fallback), one probability per 32 ms chunk.
* :mod:`.turns` -- end-pointing: speech start, utterance end (silence after
  speech), blip rejection, forced end at a maximum length, pre-roll.
* :mod:`.listening` -- the 25 fps 58-D FLAME "attentive listener" motion shown
  whenever the avatar is not speaking (blinks, nods at pauses, gaze holding).
* :mod:`.session` -- :class:`~.session.ConversationSession`, the turn logic
  (idle -> listening -> thinking -> speaking -> idle, barge-in, error recovery)
  stepped by a worker thread; outputs go to a sink object.
* :mod:`.output` -- presentation-time scheduling of speech audio and FLAME on one
  timeline (released ``lead`` before their stamps, flushed on barge-in).
* :mod:`.resample` -- the answer audio at the node's output rate (soxr stream).
* :mod:`.runtime` -- :class:`~.runtime.ConversationRuntime`: session + output
  timeline + the worker and clock threads, what a node runs (it only converts
  messages, owns parameters and lifecycle, and calls it).

The audio message decoding lives in :mod:`a2llm_ros.audio.frontend` and the
FLAME -> robot/blendshape mapping in :mod:`a2llm_ros.retarget`.  Nothing here
imports ``rclpy`` or ``torch``.
"""
