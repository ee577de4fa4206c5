//! The model algorithms this build reads, scores and trains: one line each in
//! the `registry!` call below. The macro makes [`Algorithm`] (what a model file
//! holds, dispatching to each algorithm's [`Learner`]) and [`TrainParams`] (what
//! training asks for), and reads and writes each algorithm's own fields of the
//! file in the order the file lays them out.

use serde::Serialize;

use crate::learner::{FitError, Fitted, Learner, Rows};
use crate::Scaler;

/// Writes a model file's fields in their order, the algorithm's own among
/// them: the bytes the checksum is taken over, and (with `checksum`) the file.
pub(crate) fn write_fields<P: Serialize>(
    header: &crate::file::Header<'_>,
    params: &P,
    checksum: Option<&str>,
    pretty: bool,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Fields<'a, P> {
        format: &'a str,
        format_version: u32,
        name: &'a str,
        algorithm: &'a str,
        inputs: &'a [String],
        scaler: &'a Scaler,
        #[serde(flatten)]
        params: &'a P,
        training: &'a serde_json::Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum: Option<&'a str>,
    }
    let h = header;
    let fields = Fields {
        format: h.format,
        format_version: h.format_version,
        name: h.name,
        algorithm: h.algorithm,
        inputs: h.inputs,
        scaler: h.scaler,
        params,
        training: h.training,
        checksum,
    };
    let written = if pretty { serde_json::to_vec_pretty(&fields) } else { serde_json::to_vec(&fields) };
    written.unwrap_or_default()
}

macro_rules! registry {
    ($($variant:ident($learner:ty)),+ $(,)?) => {
        /// A fitted model algorithm, as a model file holds it.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Algorithm {
            $($variant($learner),)+
        }

        /// What to train, with its parameters.
        #[derive(Debug, Clone)]
        pub enum TrainParams {
            $($variant(<$learner as Learner>::Params),)+
        }

        /// Every algorithm's name, as model files give it.
        pub const ALGORITHMS: &[&str] = &[$(<$learner as Learner>::NAME),+];

        /// The newest model file format version any algorithm writes.
        pub const LATEST_FORMAT_VERSION: u32 = {
            let mut newest = 0;
            $(if <$learner as Learner>::FORMAT_VERSION > newest {
                newest = <$learner as Learner>::FORMAT_VERSION;
            })+
            newest
        };

        impl Algorithm {
            /// The algorithm's name, as model files give it.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Algorithm::$variant(_) => <$learner as Learner>::NAME,)+
                }
            }

            /// Reads the algorithm `name`'s own fields of a model file.
            pub(crate) fn read(
                name: &str,
                fields: serde_json::Map<String, serde_json::Value>,
            ) -> Result<Algorithm, String> {
                match name {
                    $(n if n == <$learner as Learner>::NAME => serde_json::from_value(fields.into())
                        .map(Algorithm::$variant)
                        .map_err(|e| format!("{n}: {e}")),)+
                    other => Err(format!("unknown algorithm `{other}` (known: {})", ALGORITHMS.join(", "))),
                }
            }

            /// The file's fields with this algorithm's among them ([`write_fields`]).
            pub(crate) fn write(
                &self,
                header: &crate::file::Header<'_>,
                checksum: Option<&str>,
                pretty: bool,
            ) -> Vec<u8> {
                match self {
                    $(Algorithm::$variant(a) => write_fields(header, a, checksum, pretty),)+
                }
            }

            pub(crate) fn check(&self, inputs: usize, scaler: &Scaler, format_version: u32) -> Result<(), String> {
                match self {
                    $(Algorithm::$variant(a) => a.check(inputs, scaler, format_version),)+
                }
            }

            pub(crate) fn score(&self, scaler: &Scaler, inputs: &[f64]) -> f64 {
                match self {
                    $(Algorithm::$variant(a) => a.score(scaler, inputs),)+
                }
            }

            pub(crate) fn contributions(&self, scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
                match self {
                    $(Algorithm::$variant(a) => a.contributions(scaler, inputs, visit),)+
                }
            }

            pub(crate) fn explain(&self, scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) -> f64 {
                match self {
                    $(Algorithm::$variant(a) => a.explain(scaler, inputs, visit),)+
                }
            }

            pub(crate) fn baseline(&self, scaler: &Scaler) -> Option<f64> {
                match self {
                    $(Algorithm::$variant(a) => a.baseline(scaler),)+
                }
            }
        }

        impl TrainParams {
            /// The name of the algorithm these parameters train.
            pub fn algorithm(&self) -> &'static str {
                match self {
                    $(TrainParams::$variant(_) => <$learner as Learner>::NAME,)+
                }
            }

            /// Fits the algorithm on the training rows.
            pub fn fit(&self, data: &Rows<'_>) -> Result<Fitted<Algorithm>, FitError> {
                match self {
                    $(TrainParams::$variant(p) => Ok(<$learner>::fit(p, data)?.map(Algorithm::$variant)),)+
                }
            }
        }
    };
}

registry! {
    Logistic(crate::logistic::Logistic),
    IsolationForest(crate::forest::Forest),
    GradientBoostedTrees(crate::gbdt::Gbdt),
}
