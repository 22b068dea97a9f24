"""`python -m clay_hf.training` (and `accelerate launch -m clay_hf.training`): the pretraining script."""

from .pretrain import main

main()
