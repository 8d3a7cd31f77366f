//! The CPU features an artifact's code was compiled for, against those of the CPU loading it:
//! code using an instruction the CPU lacks would die of SIGILL in the middle of a run, so the
//! load is refused instead, naming the features.

/// The features of `llvm_features` (LLVM's list, `+avx2,-avx512f,…`: those enabled) that
/// `has` says the running CPU lacks, among those it knows how to ask about; in the list's
/// order.
pub(crate) fn missing<'a>(llvm_features: &'a str, has: &dyn Fn(&str) -> Option<bool>) -> Vec<&'a str> {
    llvm_features.split(',').filter_map(|f| f.trim().strip_prefix('+')).filter(|f| has(f) == Some(false)).collect()
}

/// Whether this CPU has the feature LLVM calls `name`: `None` for a feature this runtime does
/// not ask about (assumed present: the list covers the vector and matrix extensions that
/// kernels use).
pub(crate) fn host_has(name: &str) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        Some(match name {
            "sse4.1" => has!("sse4.1"),
            "sse4.2" => has!("sse4.2"),
            "popcnt" => has!("popcnt"),
            "avx" => has!("avx"),
            "avx2" => has!("avx2"),
            "fma" => has!("fma"),
            "f16c" => has!("f16c"),
            "bmi" => has!("bmi1"),
            "bmi2" => has!("bmi2"),
            "lzcnt" => has!("lzcnt"),
            "avx512f" => has!("avx512f"),
            "avx512bw" => has!("avx512bw"),
            "avx512cd" => has!("avx512cd"),
            "avx512dq" => has!("avx512dq"),
            "avx512vl" => has!("avx512vl"),
            "avx512vnni" => has!("avx512vnni"),
            "avx512bf16" => has!("avx512bf16"),
            "avx512vbmi" => has!("avx512vbmi"),
            "avx512vbmi2" => has!("avx512vbmi2"),
            "avx512ifma" => has!("avx512ifma"),
            "avx512bitalg" => has!("avx512bitalg"),
            "avx512vpopcntdq" => has!("avx512vpopcntdq"),
            "avx512fp16" => has!("avx512fp16"),
            "avxvnni" => has!("avxvnni"),
            "gfni" => has!("gfni"),
            "vaes" => has!("vaes"),
            "vpclmulqdq" => has!("vpclmulqdq"),
            _ => return None,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enabled features the CPU lacks are named; disabled ones, features it has and ones it
    /// is not asked about are not.
    #[test]
    fn names_the_enabled_features_the_cpu_lacks() {
        let cpu = |f: &str| match f {
            "avx2" | "fma" => Some(true),
            "avx512f" | "avx512bw" | "avx512bf16" => Some(false),
            _ => None,
        };
        let list = "+avx2,+fma,+avx512f,-avx512bf16,+avx512bw,+prfchw,+amx-tile";
        assert_eq!(missing(list, &cpu), vec!["avx512f", "avx512bw"]);
        assert!(missing("", &cpu).is_empty());
    }

    /// This CPU has every feature LLVM reports for it (what `kiln compile` for the host
    /// writes) among those asked about: SSE4.2 at least on any x86-64 a test runs on.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_host_has_what_it_is_asked_about() {
        assert_eq!(host_has("sse4.2"), Some(true));
        assert_eq!(host_has("no-such-feature"), None);
    }
}
