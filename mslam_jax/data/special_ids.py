"""The reserved ids every vocabulary of the project shares (character and SentencePiece alike).

They live apart from `vocabularies` so that the model, its losses and the trainer read them without
importing the data pipeline (SeqIO, TensorFlow): an accelerator job that only trains on prepared
batches, or a benchmark, needs JAX and Flax alone.
"""
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MASK_ID = 3
BLANK_ID = 4
NUM_RESERVED = 5
RESERVED_NAMES = ("<pad>", "<eos>", "<unk>", "<mask>", "<blank>")
