// Whisper's mel filterbank, computed (whisper.cpp's converters copy it from openai-whisper's
// mel_filters.npz, which librosa made): librosa.filters.mel(sr=16000, n_fft=400, n_mels=80 or 128)
// with its defaults (Slaney's mel scale and area normalization, float32 weights), reproduced
// operation by operation in double precision with the same roundings, so the floats are the
// stored ones bit for bit (tests/unit/test_whisper.cpp checks this against whisper.cpp's fixture).
#pragma once

#include "mixq/io/whisper_file.h"

namespace mixq {

// n_mels rows of n_fft / 2 + 1 values. Throws std::invalid_argument for non-positive sizes.
WhisperMelFilters whisper_mel_filters(int n_mels, int sample_rate = 16000, int n_fft = 400);

}  // namespace mixq
