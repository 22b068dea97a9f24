"""The models of clay_hf: `clay/` is Clay v0 as a self-contained transformers model (the Hub remote code);
`benchmarking` measures its throughput."""
