// rgd_engine._C.DecoderStack (decoder_stack.cpp): the fast forward's decoder layers for few-row steps in one call.
#pragma once

#include <torch/extension.h>

namespace rgd {
namespace cpu {

// Registers the DecoderStack class on the extension module.
void bind_decoder_stack(pybind11::module& m);

}  // namespace cpu
}  // namespace rgd
