"""What `train.py` uses: preparing rows and batches, image preprocessing, LoRA and model cards."""
