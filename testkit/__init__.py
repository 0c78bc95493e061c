"""Support code shared by tests/ and bench/ (not tests, not installed): tiny real models,
the app as a subprocess, real peers on 127.0.0.1 (an RTSP server, a mosquitto broker, HTTP
viewers and attackers), the CUDA kernels built as host C++, the mmseg reference runner."""
