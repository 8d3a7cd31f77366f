//! Whole models end to end: the nine "light" models of the onnx wheel and the random-weight
//! models whose expected outputs come from onnxruntime (see scripts/gen_testdata.py).

fn check_dir(suite: &str, name: &str) {
    let dir = kiln_tests::data_root().join(suite).join(name);
    let (rtol, atol) = kiln_tests::tolerance(&dir);
    let case = kiln_tests::load_case(&dir, rtol, atol).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = kiln_tests::run_lib(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
    kiln_tests::compare(&got, &case.expected, case.rtol, case.atol).unwrap_or_else(|e| panic!("{name}: {e}"));
}

macro_rules! model_tests {
    ($suite:literal: $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_dir($suite, stringify!($name));
        }
    )*};
}

mod light {
    use super::check_dir;
    model_tests!("light": bvlc_alexnet, densenet121, inception_v1, inception_v2, resnet50, shufflenet, squeezenet, vgg19, zfnet512);
}

mod random_weights {
    use super::check_dir;
    model_tests!("models": resnet_cnn, transformer_encoder, mlp);
}
