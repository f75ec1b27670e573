//! The launch against the insecure software model of the firmware, then an unencrypted run of
//! the same memory image so the loader path and the guest's first instructions run on any
//! KVM host.

use std::path::Path;

use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::igvm::{run_launch, LaunchPlan};
use veil_snp::vmsa::Vmsa;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    image, page_from, GuestFacts, LaunchInputs, SnpConfig, SnpFirmware, SnpLaunch, SnpLaunchError,
};

/// Lays the plan out in guest memory, runs LAUNCH_START/UPDATE/FINISH against the insecure
/// model and returns the digest it accumulated.
pub fn launch_with_model(
    mem: &GuestMemoryMmap,
    plan: &LaunchPlan,
    config: &SnpConfig,
    facts: &GuestFacts,
) -> Result<SnpLaunch, SnpLaunchError> {
    let inputs = LaunchInputs::new(plan, config, facts)?;
    image::write_image(mem, plan, facts)?;
    let mut firmware = InsecureModelFirmware::new();
    let mut store_err = None;
    run_launch(
        &mut firmware,
        plan,
        inputs.policy,
        &mut |page| page_from(mem, page),
        // The model fills SECRETS pages; they land in guest memory like the firmware's would.
        &mut |gpa, data| {
            if let Err(e) = mem.write_slice(data, GuestAddress(gpa)) {
                store_err.get_or_insert(e);
            }
        },
        &inputs.vmsas,
        &inputs.finish,
    )
    .map_err(|source| SnpLaunchError::Firmware {
        firmware: "insecure model",
        source,
    })?;
    if let Some(e) = store_err {
        return Err(e.into());
    }
    if let Some(path) = &config.model_report {
        write_model_report(&firmware, path)?;
    }
    Ok(SnpLaunch {
        firmware: SnpFirmware::Model,
        digest: firmware.launch_digest().hex(),
        measured_bytes: plan.measured_bytes(),
        vcpu_signature: inputs.vcpu_signature,
        device_args_not_passed: Vec::new(),
    })
}

/// The boot vCPU's state for running the image as a normal VM: CR3 keeps only the bits the
/// host's physical address width allows, since the C-bit an SNP image sets there is a
/// reserved bit without SNP, and EFER.SVME is dropped (it is KVM's business on SNP). The
/// guest's page tables keep their C-bits, so such a guest faults once it walks them: the
/// launch path is what runs here, not the SNP guest.
pub fn unencrypted_bsp(vmsa: &Vmsa, phys_bits: u8) -> Vmsa {
    Vmsa {
        cr3: vmsa.cr3 & ((1u64 << phys_bits.clamp(32, 52)) - 1),
        efer: vmsa.efer & !(1 << 12),
        ..vmsa.clone()
    }
}

fn write_model_report(firmware: &InsecureModelFirmware, path: &Path) -> Result<(), SnpLaunchError> {
    let fail = |reason: String| SnpLaunchError::Report {
        path: path.to_owned(),
        reason,
    };
    let report = firmware
        .attestation_report([0u8; 64], 0)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(path, report.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut pem_path = path.as_os_str().to_owned();
    pem_path.push(".pub.pem");
    let pem = firmware.public_key_pem().map_err(|e| fail(e.to_string()))?;
    std::fs::write(pem_path, pem).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_bit_and_svme_are_dropped_for_the_unencrypted_run() {
        let vmsa = Vmsa {
            cr3: (1 << 51) | 0x9000,
            efer: 0x1500,
            rip: 0x100_0000,
            ..Vmsa::default()
        };
        let bsp = unencrypted_bsp(&vmsa, 46);
        assert_eq!(bsp.cr3, 0x9000);
        assert_eq!(bsp.efer, 0x500);
        assert_eq!(bsp.rip, vmsa.rip);
    }
}
