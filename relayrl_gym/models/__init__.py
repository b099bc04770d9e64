"""The model path: where new policies come from (`ZMQModelSource`) and the one holder of
the current policy and its version (`PolicyRunner`). Models never ride the data path."""
