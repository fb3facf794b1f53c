"""LoRA fine-tuning: packing (packing.py), training sets (sft_data.py), the optax loop (lora_trainer.py)."""
