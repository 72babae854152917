//! Fuzz target `kubeconfig`: see `certrotd::fuzzing::kubeconfig`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certrotd::fuzzing::kubeconfig(data);
});
