// Whisper's audio front end: 16 kHz mono 16-bit PCM WAV files, and the log-mel spectrogram the
// encoder reads (OpenAI Whisper's definition, which whisper.cpp follows): a periodic Hann window of
// 400 samples, hop 160, |FFT|^2 of the 201 bins, the model's mel filters, log10 (floor 1e-10),
// clamped to (max - 8), then (x + 4) / 4; the audio is reflect-padded by 200 samples in front and
// zero-padded behind to 30 s: n_frames (3000) frames.
#pragma once

#include <filesystem>
#include <vector>

#include "mixq/io/whisper_file.h"

namespace mixq {

// Samples in [-1, 1). Throws std::runtime_error naming the file for anything but RIFF/WAVE PCM
// 16-bit mono 16 kHz (resample with e.g. `ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav`).
std::vector<float> read_wav_16k_mono(const std::filesystem::path& path);

// n_mel rows of n_frames values (row-major [mel][frame]); only the first 30 s of samples are used.
std::vector<float> whisper_log_mel(const std::vector<float>& samples, const WhisperMelFilters& filters,
                                   int n_frames = 3000);

}  // namespace mixq
