"""Built-in training methods: edm (pretraining), diffratio and vsd (one-step generators)."""
