"""Neural engines: model, training (``train`` extra), export, quantization, runtime backends."""
