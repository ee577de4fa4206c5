//! The model file: a shared header (format, name, inputs, preprocessing,
//! training summary), the algorithm's own fields, and a SHA-256 checksum over
//! all of it, taken over the fields in the order the file lays them out.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Algorithm, ModelError, Scaler, FORMAT, LATEST_FORMAT_VERSION};

/// The content of a model file, less its checksum.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBody {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    pub inputs: Vec<String>,
    pub scaler: Scaler,
    /// The fitted algorithm; the file names it (`"algorithm"`) and holds its
    /// own fields beside the header's.
    pub algorithm: Algorithm,
    /// Free-form training summary (data range, metrics, hyperparameters).
    pub training: serde_json::Value,
}

/// The header fields of a file, borrowed for writing.
pub(crate) struct Header<'a> {
    pub format: &'a str,
    pub format_version: u32,
    pub name: &'a str,
    pub algorithm: &'a str,
    pub inputs: &'a [String],
    pub scaler: &'a Scaler,
    pub training: &'a serde_json::Value,
}

impl ModelBody {
    fn header(&self) -> Header<'_> {
        Header {
            format: &self.format,
            format_version: self.format_version,
            name: &self.name,
            algorithm: self.algorithm.name(),
            inputs: &self.inputs,
            scaler: &self.scaler,
            training: &self.training,
        }
    }

    /// The compact bytes the checksum is taken over.
    fn canonical(&self) -> Vec<u8> {
        self.algorithm.write(&self.header(), None, false)
    }
}

/// A file as read: the header, the checksum, and the algorithm's own fields
/// (read by the algorithm, which refuses fields it does not know).
#[derive(serde::Deserialize)]
struct RawFile {
    format: String,
    format_version: u32,
    name: String,
    algorithm: String,
    inputs: Vec<String>,
    scaler: Scaler,
    #[serde(default)]
    training: serde_json::Value,
    checksum: String,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

fn checksum(body: &ModelBody) -> String {
    Sha256::digest(body.canonical()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A trained model, checked: the algorithm its file says, over the inputs it names.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    body: ModelBody,
    version: String,
}

impl TrainedModel {
    pub fn new(body: ModelBody) -> Result<TrainedModel, String> {
        let n = body.inputs.len();
        if n == 0 {
            return Err("the model has no inputs".into());
        }
        body.scaler.check(n)?;
        body.algorithm.check(n, &body.scaler, body.format_version)?;
        if !body.scaler.mean.iter().chain(&body.scaler.std).all(|x| x.is_finite()) {
            return Err("parameters must be finite numbers".into());
        }
        if body.scaler.std.iter().any(|s| *s <= 0.0) {
            return Err("scaler deviations must be positive".into());
        }
        let sum = checksum(&body);
        let version = format!("{}@{}", body.name, &sum[..12]);
        Ok(TrainedModel { body, version })
    }

    pub fn body(&self) -> &ModelBody {
        &self.body
    }

    /// Serialises with its checksum, as [`load`] reads it.
    pub fn to_file_json(&self) -> String {
        let bytes = self.body.algorithm.write(&self.body.header(), Some(&checksum(&self.body)), true);
        String::from_utf8(bytes).unwrap_or_default()
    }
}

impl crate::Model for TrainedModel {
    fn inputs(&self) -> &[String] {
        &self.body.inputs
    }

    fn score(&self, inputs: &[f64]) -> f64 {
        self.body.algorithm.score(&self.body.scaler, inputs)
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn contributions(&self, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
        self.body.algorithm.contributions(&self.body.scaler, inputs, visit)
    }

    fn explain(&self, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) -> f64 {
        self.body.algorithm.explain(&self.body.scaler, inputs, visit)
    }

    fn baseline(&self) -> Option<f64> {
        self.body.algorithm.baseline(&self.body.scaler)
    }
}

/// Loads and checks a model file. `available` lists the inputs the pipeline can
/// provide; a model that needs anything else is refused.
pub fn load(path: &Path, available: &[&str]) -> Result<TrainedModel, ModelError> {
    load_checked(path, Some(available))
}

/// Loads and checks a model file whatever inputs it takes (for models trained
/// on a table of numeric columns rather than on a pipeline's features).
pub fn load_any(path: &Path) -> Result<TrainedModel, ModelError> {
    load_checked(path, None)
}

fn load_checked(path: &Path, available: Option<&[&str]>) -> Result<TrainedModel, ModelError> {
    let text = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text, available)
}

/// Checks the bytes of a model file, as [`load`] (`available` given) or
/// [`load_any`] (`None`) do once they have read it; `path` names it in errors.
pub fn parse(path: &Path, text: &[u8], available: Option<&[&str]>) -> Result<TrainedModel, ModelError> {
    read(path, text, available, true)
}

/// [`parse`] without comparing the stated checksum: every other check a file
/// meets. For fuzzing, so that damaged files get past the checksum to the
/// checks of their content; never for loading a file to score with.
#[doc(hidden)]
pub fn parse_ignoring_checksum(path: &Path, text: &[u8]) -> Result<TrainedModel, ModelError> {
    read(path, text, None, false)
}

fn read(path: &Path, text: &[u8], available: Option<&[&str]>, verify: bool) -> Result<TrainedModel, ModelError> {
    let malformed = |message: String| ModelError::Malformed { path: path.to_path_buf(), message };
    let raw: RawFile = serde_json::from_slice(text).map_err(|e| malformed(e.to_string()))?;
    let algorithm = Algorithm::read(&raw.algorithm, raw.fields).map_err(malformed)?;
    let body = ModelBody {
        format: raw.format,
        format_version: raw.format_version,
        name: raw.name,
        inputs: raw.inputs,
        scaler: raw.scaler,
        algorithm,
        training: raw.training,
    };
    let actual = checksum(&body);
    if verify && actual != raw.checksum {
        return Err(ModelError::Checksum { path: path.to_path_buf(), stated: raw.checksum, actual });
    }
    let invalid = |message: String| ModelError::Invalid { path: path.to_path_buf(), message };
    if body.format != FORMAT || !(1..=LATEST_FORMAT_VERSION).contains(&body.format_version) {
        return Err(invalid(format!(
            "format {} v{} is not {FORMAT} v1 to v{LATEST_FORMAT_VERSION}",
            body.format, body.format_version
        )));
    }
    let missing: Vec<&str> = match available {
        Some(available) => body.inputs.iter().map(String::as_str).filter(|i| !available.contains(i)).collect(),
        None => Vec::new(),
    };
    if !missing.is_empty() {
        return Err(invalid(format!("needs inputs the pipeline does not declare: {}", missing.join(", "))));
    }
    TrainedModel::new(body).map_err(invalid)
}
