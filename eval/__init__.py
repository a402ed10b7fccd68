"""Evaluation: PESQ, real-time factor, reports and the demo (built on `students`)."""
