"""One run's life (`resexp train` of one config): lifecycle (check, admit, start or resume, train,
finish), the loop (loop), one optimisation step (step), evaluation (evaluate), checkpoints
(checkpoint), the recorder of metrics, TensorBoard and status (recorder), the lr schedule
(schedule), the speed settings (speed), the model and optimizer set up (setup), the signals that
stop it (signals), DDP (ddp) and TensorBoard's HParams (hparams)."""
