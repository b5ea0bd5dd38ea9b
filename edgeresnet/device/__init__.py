"""The device side: runs on a Pi or phone test rig and never imports TensorFlow."""
