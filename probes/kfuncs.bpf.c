// SPDX-License-Identifier: GPL-2.0
/* The kernel-function layer: placeholder until the function probes land. */
#include "common.bpf.h"
