"""Training a small Stable-Diffusion-style inpainting model on an amodal dataset's ROI crops.

Stable Diffusion cannot be downloaded here, and a randomly initialized model's attention knows no shapes.
This package trains the same diffusers/transformers classes (UNet2DConditionModel with 9 input channels,
AutoencoderKL, CLIP text encoder and tokenizer), sized for ROI crops, so that DiffSP's priors can be
measured offline: `aisdiff train-diffusion` writes a folder that `load_model` reads like real weights.
"""
