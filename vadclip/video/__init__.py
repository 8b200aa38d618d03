"""Decoding: one frame per snippet from a video file (torchcodec or decord), the
decoder probe, and the sample videos of the demo and the tests."""
