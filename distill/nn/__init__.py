"""The networks' parts: WaveNet primitives and stack (+ its CPU inference engine), conditioning, linear
prediction, the mel's pitch source, output distributions, losses, model records. Imports `distill.audio`."""
