"""The offline builders: what lets everything run without the Hub, in the real checkpoint formats.

`tiny.py` generates the tiny families from configs with fixed seeds and random weights (bases, adapters, LoRAs,
ControlNets, depth, FLUX, Redux), `faces.py` the tiny insightface pack and the drawn faces its detector finds, and
`full_size.py` rebuilds the published full-size shapes (random weights) for dry runs and benchmarks. Product code
never imports them, with one door: `pipelines.sources` generates a tiny family the first time it is asked for one.
"""
