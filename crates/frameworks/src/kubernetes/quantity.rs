//! Resource quantities (`500m`, `2`, `1.5Gi`, `64M`, `1e3`): checked before anything is sent,
//! so that a bad value is a clear error naming its field rather than an API server's 422 on a
//! half-created run.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct QuantityError {
    pub field: String,
    pub message: String,
}

/// Checks `value` against Kubernetes' quantity grammar (non-negative: resources cannot be
/// negative) and returns it as a [`Quantity`].
pub fn check_quantity(field: &str, value: &str) -> Result<Quantity, QuantityError> {
    if is_quantity(value) {
        Ok(Quantity(value.to_string()))
    } else {
        Err(QuantityError {
            field: field.to_string(),
            message: format!("{value:?} is not a Kubernetes quantity (like 500m, 2, 1.5Gi, 64M)"),
        })
    }
}

/// `number [suffix]`: a decimal number (no sign but `+`), then one of the binary suffixes
/// `Ki Mi Gi Ti Pi Ei`, the decimal ones `n u m k M G T P E`, or an exponent `e<int>`/`E<int>`.
fn is_quantity(value: &str) -> bool {
    let value = value.strip_prefix('+').unwrap_or(value);
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    if parts.next().is_some() || (whole.is_empty() && fraction.is_none_or(str::is_empty)) {
        return false;
    }
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exponent => {
            let Some(rest) = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))
            else {
                return false;
            };
            let rest = rest
                .strip_prefix('-')
                .or_else(|| rest.strip_prefix('+'))
                .unwrap_or(rest);
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        }
    }
}

/// CPU cores as a quantity: whole milli-cores (`500m`, `2`), which is as fine as Kubernetes
/// schedules. A value that is not a positive finite number is an error naming `field`.
pub fn cpu_quantity(field: &str, cpus: f64) -> Result<Quantity, QuantityError> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 1e6 {
        return Err(QuantityError {
            field: field.to_string(),
            message: format!("{cpus} must be a positive number of cores"),
        });
    }
    let millis = ((cpus * 1000.0).round() as u64).max(1);
    Ok(Quantity(if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }))
}

/// Memory in bytes as a quantity: the largest binary suffix that divides it.
pub fn memory_quantity(field: &str, bytes: u64) -> Result<Quantity, QuantityError> {
    if bytes == 0 {
        return Err(QuantityError {
            field: field.to_string(),
            message: "0 is not a usable memory limit".to_string(),
        });
    }
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes.is_multiple_of(1u64 << shift) {
            return Ok(Quantity(format!("{}{suffix}", bytes >> shift)));
        }
    }
    Ok(Quantity(bytes.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "1", "500m", "1.5", ".5", "2.", "1Gi", "64M", "1e3", "1E-2", "+3", "0", "100Ki",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in [
            "", "-1", "1.2.3", "1GB", "Gi", ".", "1e", "abc", "1 Gi", "1gi", "e3", "1Gi ",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let error = check_quantity("limits.memory", "1GB").unwrap_err();
        assert_eq!(error.field, "limits.memory");
    }

    #[test]
    fn cpus_and_bytes_become_quantities() {
        assert_eq!(cpu_quantity("c", 0.5).unwrap().0, "500m");
        assert_eq!(cpu_quantity("c", 2.0).unwrap().0, "2");
        assert_eq!(cpu_quantity("c", 0.0001).unwrap().0, "1m");
        assert!(cpu_quantity("limits.cpus", f64::NAN)
            .unwrap_err()
            .to_string()
            .starts_with("limits.cpus:"));
        assert!(cpu_quantity("c", -1.0).is_err());
        assert_eq!(memory_quantity("m", 64 << 20).unwrap().0, "64Mi");
        assert_eq!(memory_quantity("m", 3 << 30).unwrap().0, "3Gi");
        assert_eq!(memory_quantity("m", 1000).unwrap().0, "1000");
        assert!(memory_quantity("limits.memory_bytes", 0).is_err());
    }
}
