"""Reading and writing: videos and their decoders, label and video writers, run outputs,
provenance."""
