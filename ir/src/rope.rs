//! Rotary position embedding frequencies, with the context-extension variants of the
//! published models: one definition, used by the interpreter and every backend.
//!
//! Plain RoPE rotates feature pair `i` (of `d/2`) at position `p` by `p·θ^(−2i/d)`.
//! The scalings change those inverse frequencies (and YaRN also the magnitude):
//! - linear (position interpolation, Chen et al. 2023): every frequency / factor;
//! - Llama 3.1: low frequencies (wavelength > original / low_freq_factor) / factor,
//!   high ones (wavelength < original / high_freq_factor) kept, a smooth blend between;
//! - YaRN (Peng et al. 2023; DeepSeek-V2): a linear ramp between interpolated and
//!   original frequencies over the dimensions whose rotations in the original context
//!   fall between `beta_fast` and `beta_slow`, and cos/sin scaled by
//!   `attention_factor`.

use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum RopeScaling {
    #[default]
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: u64,
    },
    Yarn {
        factor: f64,
        original_max_positions: u64,
        beta_fast: f64,
        beta_slow: f64,
        /// The cos and sin are multiplied by this.
        attention_factor: f64,
    },
}

impl RopeScaling {
    pub fn is_none(&self) -> bool {
        matches!(self, RopeScaling::None)
    }

    /// The scaling's name in the IR text (`none`, `linear`, `llama3`, `yarn`).
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "none",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }

    /// The numbers, in a fixed order per kind (the inverse of
    /// [`RopeScaling::from_params`]).
    pub fn params(&self) -> Vec<f64> {
        match *self {
            RopeScaling::None => vec![],
            RopeScaling::Linear { factor } => vec![factor],
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => vec![
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions as f64,
            ],
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                attention_factor,
            } => vec![
                factor,
                original_max_positions as f64,
                beta_fast,
                beta_slow,
                attention_factor,
            ],
        }
    }

    /// The scaling named `kind` with [`RopeScaling::params`] `p`.
    pub fn from_params(kind: &str, p: &[f64]) -> Option<RopeScaling> {
        let count =
            |v: f64| (v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)).then_some(v as u64);
        Some(match (kind, p) {
            ("none", []) => RopeScaling::None,
            ("linear", [factor]) => RopeScaling::Linear { factor: *factor },
            ("llama3", [f, lo, hi, old]) => RopeScaling::Llama3 {
                factor: *f,
                low_freq_factor: *lo,
                high_freq_factor: *hi,
                original_max_positions: count(*old)?,
            },
            ("yarn", [f, old, bf, bs, att]) => RopeScaling::Yarn {
                factor: *f,
                original_max_positions: count(*old)?,
                beta_fast: *bf,
                beta_slow: *bs,
                attention_factor: *att,
            },
            _ => return None,
        })
    }

    /// The multiplier of cos and sin (1 but for YaRN).
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// Why the numbers cannot be a scaling, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("`{name}` must be a positive number, got {v}"))
            }
        };
        match *self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "`high_freq_factor` ({high_freq_factor}) must be larger than `low_freq_factor` ({low_freq_factor})"
                    ));
                }
                if original_max_positions == 0 {
                    return Err("`original_max_positions` must be at least 1".into());
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                attention_factor,
            } => {
                positive("factor", factor)?;
                positive("beta_fast", beta_fast)?;
                positive("beta_slow", beta_slow)?;
                positive("attention_factor", attention_factor)?;
                if original_max_positions == 0 {
                    return Err("`original_max_positions` must be at least 1".into());
                }
                Ok(())
            }
        }
    }

    /// The `d / 2` inverse frequencies of a width-`d` rotary embedding with base
    /// `theta`.
    pub fn inv_freqs(&self, theta: f64, d: usize) -> Vec<f64> {
        let half = d / 2;
        let plain: Vec<f64> = (0..half)
            .map(|i| theta.powf(-2.0 * i as f64 / d as f64))
            .collect();
        match *self {
            RopeScaling::None => plain,
            RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let old = original_max_positions as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                ..
            } => {
                // The dimension whose wavelength fits `rotations` times into the
                // original context.
                let old = original_max_positions as f64;
                let dim_of = |rotations: f64| {
                    d as f64 * (old / (rotations * 2.0 * PI)).ln() / (2.0 * theta.ln())
                };
                let low = dim_of(beta_fast).floor().max(0.0);
                let mut high = dim_of(beta_slow).ceil().min(d as f64 - 1.0);
                if low == high {
                    high += 0.001;
                }
                plain
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        // Below `low`: the original frequency (extrapolation);
                        // above `high`: interpolated (f / factor).
                        let keep = 1.0 - ramp;
                        f / factor * (1.0 - keep) + f * keep
                    })
                    .collect()
            }
        }
    }
}

/// YaRN's magnitude correction `0.1·m·ln(s) + 1` for scale `s > 1` (1 otherwise).
pub fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 8192,
        };
        let plain = RopeScaling::None.inv_freqs(500000.0, 128);
        let scaled = s.inv_freqs(500000.0, 128);
        // Wavelength 2π: unchanged; the lowest frequency: divided by 8.
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-18);
        // In between, between the two.
        let mid = (0..64)
            .find(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0)
            .unwrap();
        assert!(scaled[mid] < plain[mid] && scaled[mid] > plain[mid] / 8.0);
    }

    #[test]
    fn yarn_ramps_from_original_to_interpolated() {
        let s = RopeScaling::Yarn {
            factor: 40.0,
            original_max_positions: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
        };
        let plain = RopeScaling::None.inv_freqs(10000.0, 64);
        let scaled = s.inv_freqs(10000.0, 64);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 40.0).abs() < 1e-18);
        assert!(s.check().is_ok());
        let bad = RopeScaling::Linear { factor: -1.0 };
        assert!(bad.check().unwrap_err().contains("factor"));
    }
}
