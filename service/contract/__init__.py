"""The leaf contract between the build side (export, training) and the server: the model
config schema, every task's parameter schema, artifact and tensor names. Defined once here;
it imports nothing else of segserve."""
