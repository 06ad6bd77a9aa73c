"""The two scorers of one protocol: seq2seq likelihood (T5 / T0-3B) and cross-encoder (BERT-like encoders).

The only place where a T5 and an encoder differ."""
