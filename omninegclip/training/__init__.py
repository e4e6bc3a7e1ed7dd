"""What `train.py` uses: its flags' rules (`arguments`), the model and data made ready (`prepare`,
`data`, `images`, `lora`), the Trainer (`trainer`, `callbacks`), the output folder (`checkpoints`,
`saving`) and model cards."""
