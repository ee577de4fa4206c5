//! ISO 4217 currency codes in circulation (alphabetic codes, including the
//! precious-metal and special codes a payment system may legitimately see).

const CODES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV \
BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD \
EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD \
JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU \
MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB \
RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD \
TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF \
XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG ZWL";

/// Whether `code` is an ISO 4217 alphabetic code (exactly three upper-case letters in the list).
pub fn is_iso4217(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) && CODES.split_ascii_whitespace().any(|c| c == code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_and_unknown_codes() {
        assert!(super::is_iso4217("EUR"));
        assert!(super::is_iso4217("JPY"));
        assert!(!super::is_iso4217("eur"));
        assert!(!super::is_iso4217("ABC"));
        assert!(!super::is_iso4217("EURO"));
    }
}
