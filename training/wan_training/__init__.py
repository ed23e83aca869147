"""Toy-scale training of Wan2.1-layout models on synthetic captioned clips (CPU friendly).

Stages (``python -m wan_training.recipe`` runs them all): :mod:`.data` synthetic clips, :mod:`.vae` the VAE,
:mod:`.teacher` the flow-matching T2V teacher, :mod:`.distill` DMD step distillation to a 4-step student,
:mod:`.export` the released file layout (distilled checkpoint + SVD LoRA), :mod:`.classifier` / :mod:`.evaluate`
quality. Imports ``wan_distill`` (models, samplers, loaders); ``wan_distill`` never imports this package.
"""
